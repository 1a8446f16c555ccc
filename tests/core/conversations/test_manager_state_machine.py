"""Stateful property: one persisted manager through random operations, closed and resumed at random points.

A hypothesis state machine drives one :class:`EnhancedContextManager` with a conversation id on a real
SQLite store (a temporary ``storage_path``) through random adds (every role and priority, pinned or not,
one token to more than half the budget, unicode, any JSON metadata, names), batches, pins and unpins,
explicit compressions, model tool calls run at once or left pending and then run, answered by hand or
cancelled (a fast tool, one that cuts its output, a failing one, a slow one past its timeout), messages
added (or the manager closed) while tools run, bursts of concurrent adds, pins and compressions (with the
extractive summary or a custom one that yields and sometimes fails), reloads, and closing the manager to
open a new one on the same id. Budgets are small (200 to 2000 tokens), so the window compresses all the
time.

After every step the window keeps its promises: at most ``max_tokens`` (the total exact), system, pinned
and critical messages present, tool calls and results paired and together, nothing lost (each message is
in the window, queued for memory or in memory under its derived id, a cut message's full text too), the
newest user request readable from its start and its end (and keeping a quarter of ``max_tokens`` of its
text when there is room), exports valid for OpenAI and Anthropic, budgeted exports within their budget, a
refused change (the budget, invalid input) leaving everything as it was. Every
resume gives exactly what was closed: the same export bytes, history, token total, pins and pending calls.

``CM_STATEFUL_EXAMPLES`` and ``CM_STATEFUL_STEPS`` raise the counts for a longer hunt (default 40 runs of
30 steps, about 15 s), e.g. ``CM_STATEFUL_EXAMPLES=3000 CM_STATEFUL_STEPS=50 pytest --timeout=0 ...``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from context_manager.core.compression import SUMMARY_METADATA_KEY, TRUNCATED_METADATA_KEY
from context_manager.core.config import ContextManagerConfig
from context_manager.core.enhanced_context_manager import EnhancedContextManager
from context_manager.core.errors import ContextBudgetError, InvalidMessageError
from context_manager.core.memory.writing import message_memory_id, message_text
from context_manager.core.messages import Message, Priority, Role, ToolCall
from context_manager.core.tokens import REPLY_PRIMING_TOKENS, get_token_counter
from tests.core.test_context_window import check_newest_request_is_readable, split_cut
from tests.provider_rules import anthropic_violations, openai_violations

COUNTER = get_token_counter()
CONVERSATION = "state-machine"
EXAMPLES = int(os.environ.get("CM_STATEFUL_EXAMPLES", "40"))
STEPS = int(os.environ.get("CM_STATEFUL_STEPS", "30"))

WORDS = ["parcel", "Oslo", "facture", "Müller", "日本語", "🙂", "mañana", "שלום", "naïve", "e\u0301", "Ω≈√"]

TEXT = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")  # valid text (no NUL)
# a text: (size in thousandths of the budget, seed, an arbitrary unicode tail, whitespace only?)
text_spec = st.tuples(
    st.one_of(st.integers(0, 25), st.integers(0, 700)),
    st.integers(0, 50),
    st.text(TEXT, max_size=6),
    st.sampled_from([False] * 15 + [True]),
)
priorities = st.sampled_from(["low", "normal", "normal", "high", "critical"])
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(TEXT, max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(TEXT, max_size=4), inner, max_size=3),
    max_leaves=5,
)
# metadata: any JSON, keys memory also writes among them (session, turn, date, speaker ...)
metadata_keys = st.sampled_from(
    [
        "session_id",
        "session_date",
        "turn_index",
        "speaker",
        "role",
        "message_id",
        "timestamp",
        "tags",
        "k",
        "ключ",
    ]
)
metadatas = st.one_of(
    st.none(), st.none(), st.dictionaries(metadata_keys | st.text(TEXT, max_size=6), json_values, max_size=3)
)
names = st.one_of(st.none(), st.none(), st.sampled_from(["alice", "Dr. Müller", "x" * 70, "bob-2", "🙂"]))
roles = st.sampled_from(["user", "user", "assistant", "assistant", "system"])
tool_names = st.sampled_from(["echo", "echo", "echo_cut", "fail", "slow"])


async def echo(tag: str, n: int) -> str:
    """Return the tag and n words."""
    return tag + " " + " ".join(WORDS[i % len(WORDS)] for i in range(n))


async def fail(tag: str, n: int) -> str:
    """Always fail."""
    raise RuntimeError(f"{tag} went wrong")


async def slow(tag: str, n: int) -> str:
    """Take far longer than its timeout."""
    await asyncio.sleep(30)
    return tag


class YieldingSummarizer:
    """A custom summarizer letting other tasks run while it works; fails every ``fail_every``-th call."""

    def __init__(self, fail_every: int) -> None:
        self.fail_every = fail_every
        self.calls = 0

    async def __call__(self, messages: Sequence[Message], budget_tokens: int) -> str:
        self.calls += 1
        for _ in range(3):
            await asyncio.sleep(0)  # adds, pins and compressions of other tasks run meanwhile
        if self.fail_every and self.calls % self.fail_every == 0:
            raise RuntimeError("the summarizer is down")
        return "Earlier: " + " / ".join(m.content[:40] for m in messages[-4:])


def is_summary(message: Message) -> bool:
    return SUMMARY_METADATA_KEY in message.metadata


class PersistedManagerMachine(RuleBasedStateMachine):
    """One persisted manager; a model of what it must hold."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.directory = Path(tempfile.mkdtemp(prefix="cm-state-"))
        self.manager: EnhancedContextManager | None = None
        self.config: ContextManagerConfig | None = None
        self.numbers = itertools.count()
        self.tags: dict[str, str] = {}  # tag -> full content of a message added (by us) with that tag
        self.ids_of_tags: dict[str, str] = {}
        self.originals: dict[str, Message] = {}  # every message seen in the window, full text, by id
        self.texts: dict[str, str] = {}  # the text memory must hold for each of them
        self.in_memory: set[str] = set()  # ids found in memory (with their full text)
        self.always_kept: set[str] = set()  # system and critical messages
        # messages pinned (at their add, or later) and not unpinned -> their text when pinned (None: whole)
        self.pinned: dict[str, str | None] = {}
        self.latest_user: str | None = None  # tag of the newest user message
        self.latest_user_own: int | None = None  # tokens of its own text it kept last time
        self.pending: list[str] = []  # call ids without a result, in call order
        self.answered_now: set[str] = set()  # calls answered by this step (their unit was waiting)
        self.compressions = 0  # compressions seen by the last check
        self.interleaved = False  # this step ran changes concurrently (a pin may follow a compression)
        self.resumes = 0
        self.summarizer: YieldingSummarizer | None = None

    # -- plumbing -------------------------------------------------------------------------------------

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    @property
    def ready(self) -> EnhancedContextManager:
        assert self.manager is not None
        return self.manager

    def tag(self) -> str:
        return f"zq{next(self.numbers)}x"

    def text(self, spec: tuple[int, int, str, bool], tag: str | None = None) -> str:
        permille, seed, tail, blank = spec
        if blank and tag is None:
            return " " * (seed % 3)  # whitespace only, or empty (refused without tool calls)
        assert self.config is not None
        words = permille * self.config.max_tokens // 1000
        body = " ".join(WORDS[(seed + i) % len(WORDS)] + str(i % 7) for i in range(words))
        text = " ".join(part for part in (tag, body, tail) if part)
        if tag is not None:
            self.tags[tag] = text
        return text

    def state(self) -> dict[str, Any]:
        """Everything a resume must give back exactly."""
        manager = self.ready
        return {
            "openai": json.dumps(manager.get_context(format="openai"), ensure_ascii=False),
            "anthropic": json.dumps(manager.get_context(format="anthropic"), ensure_ascii=False),
            "messages": [message.to_dict() for message in manager.messages],
            "history": manager.compression_history,
            "tokens": manager.get_context_summary()["token_count"],
            "pinned": sorted(m.id for m in manager.messages if m.pinned),
            "pending": [(c.id, c.name, c.arguments_json()) for c in manager.pending_tool_calls()],
        }

    def stored_version(self) -> int:
        """The version once the changes still being written (a pin, in the background) are stored."""
        status = self.ready.get_system_status()["conversation"]
        return int(status["version"]) + int(status["pending_changes"])

    async def open_manager(self) -> EnhancedContextManager:
        assert self.config is not None
        manager = EnhancedContextManager(
            self.config, conversation_id=CONVERSATION, summarizer=self.summarizer
        )
        tools = manager.tool_manager
        tools.register_function_tool("echo", echo, "Echo words")
        tools.register_function_tool("echo_cut", echo, "Echo words, cut", max_output_tokens=30)
        tools.register_function_tool("fail", fail, "Fail")
        tools.register_function_tool("slow", slow, "Slow", timeout=0.02)
        await manager.initialize()
        return manager

    def attempt(self, coroutine: Any, *, invalid: bool = False) -> Any:
        """Run a change; a refusal (the budget, or expected invalid input) leaves everything as it was."""
        before = self.state()
        refusals: tuple[type[Exception], ...] = (ContextBudgetError,)
        if invalid:
            refusals = (ContextBudgetError, InvalidMessageError)
        try:
            return self.run(coroutine)
        except refusals:
            assert self.state() == before
            return None

    def learn(self, messages: Any = ()) -> None:
        """Record the messages now in the window (and the added ones given) by id, with their full text."""
        window = self.ready.context_window
        for message in [*messages, *window.messages, *window.evicted_messages]:
            if is_summary(message) or message.id in self.originals:
                continue
            if TRUNCATED_METADATA_KEY in message.metadata:
                # a cut copy: its original was queued when it was cut, and may be in memory already (the
                # writer stores the queue in the background: still queued is fine too)
                queued = next(
                    (
                        m
                        for m in window.evicted_messages
                        if m.id == message.id and TRUNCATED_METADATA_KEY not in m.metadata
                    ),
                    None,
                )
                if queued is not None:
                    full = message_text(queued)
                else:
                    memory = self.run(
                        self.ready.memory_manager.get_memory(message_memory_id(CONVERSATION, message.id))
                    )
                    assert memory is not None, f"the full text of cut message {message.id} is lost"
                    self.in_memory.add(message.id)
                    full = memory.content
                metadata = {k: v for k, v in message.metadata.items() if k != TRUNCATED_METADATA_KEY}
                self.texts[message.id] = full
                message = dataclasses.replace(message, content=full, metadata=metadata)
            else:
                self.texts[message.id] = message_text(message)
            self.originals[message.id] = message
        for tag, text in self.tags.items():
            if tag in self.ids_of_tags:
                continue
            for message in self.originals.values():
                if message.content == text:  # (a cut copy's original: its text as remembered)
                    self.ids_of_tags[tag] = message.id
                    break

    def set_pin(self, message_id: str, text: str | None, pin: bool) -> None:
        """A pin call: the message keeps the text it had then (a cut copy stays cut); no-op if unchanged."""
        if not pin:
            self.pinned.pop(message_id, None)
        elif message_id not in self.pinned:
            self.pinned[message_id] = text

    # -- rules ----------------------------------------------------------------------------------------

    @initialize(
        budget=st.one_of(st.integers(200, 600), st.integers(200, 2000)),
        ratio=st.sampled_from([0.5, 0.8]),
        summary=st.sampled_from([40, 200]),
        snapshot_every=st.sampled_from([0, 3, 1000]),
        summarizer=st.sampled_from(["extractive", "yielding", "flaky"]),
    )
    def start(self, budget: int, ratio: float, summary: int, snapshot_every: int, summarizer: str) -> None:
        if summarizer != "extractive":
            self.summarizer = YieldingSummarizer(3 if summarizer == "flaky" else 0)
        self.config = ContextManagerConfig(
            max_tokens=budget,
            compression_ratio=ratio,
            summary_max_tokens=summary,
            cache_path=self.directory / "cache",
            storage_path=self.directory / "storage",
            conversation_snapshot_every=snapshot_every,
            enable_health_checks=False,
            embedder="none",
        )
        self.manager = self.run(self.open_manager())

    @rule(
        role=roles,
        spec=text_spec,
        priority=priorities,
        pinned=st.booleans(),
        metadata=metadatas,
        name=names,
    )
    def add_message(
        self,
        role: str,
        spec: tuple[int, int, str, bool],
        priority: str,
        pinned: bool,
        metadata: dict[str, Any] | None,
        name: str | None,
    ) -> None:
        tag = None if spec[3] else self.tag()
        content = self.text(spec, tag)
        options: dict[str, Any] = {}
        if metadata is not None:
            options["metadata"] = metadata
        if name is not None:
            options["name"] = name
        if priority != "normal":
            options["priority"] = priority
        if pinned:
            options["pinned"] = True
        before = {m.id for m in self.ready.messages}
        if self.attempt(self.ready.add_message(role, content, **options), invalid=not content) is None:
            return
        added = [m for m in self.ready.messages if m.id not in before and not is_summary(m)]
        assert len(added) == 1, added
        message = added[0]
        self.learn([message])
        if TRUNCATED_METADATA_KEY not in message.metadata:
            assert message.content == content
        if role == "system" or priority == "critical":
            self.always_kept.add(message.id)
        if pinned:
            self.pinned[message.id] = None
        if role == "user":
            self.latest_user, self.latest_user_own = message.id, None

    @rule(
        items=st.lists(
            st.tuples(roles, text_spec, priorities, st.booleans(), metadatas), min_size=1, max_size=5
        ),
    )
    def add_messages(
        self, items: list[tuple[str, tuple[int, int, str, bool], str, bool, dict[str, Any] | None]]
    ) -> None:
        batch = []
        tags = []
        for role, spec, priority, pinned, metadata in items:
            tag = self.tag()  # batch messages are found by their tag (some are evicted at once)
            tags.append(tag)
            item = {"role": role, "content": self.text(spec, tag), "priority": priority, "pinned": pinned}
            if metadata is not None:
                item["metadata"] = metadata
            batch.append(item)
        if self.attempt(self.ready.add_messages(batch)) is None:
            return
        self.learn()
        self.resolve(tags)
        for tag, item in zip(tags, batch, strict=True):
            if item["role"] == "system" or item["priority"] == "critical":
                self.always_kept.add(self.ids_of_tags[tag])
            if item["pinned"]:
                self.pinned[self.ids_of_tags[tag]] = None
            if item["role"] == "user":
                self.latest_user, self.latest_user_own = self.ids_of_tags[tag], None

    def resolve(self, tags: list[str]) -> None:
        """Find the ids of tagged messages evicted before we saw them (in memory by now)."""
        for tag in tags:
            if tag in self.ids_of_tags:
                continue
            memories = self.run(self.ready.search_memory(tag, limit=50))
            found = [m for m in memories if m.content == self.tags[tag]]
            assert found, f"message {tag} was added, is not in the window and not in memory"
            self.ids_of_tags[tag] = found[0].metadata["message_id"]
            self.in_memory.add(self.ids_of_tags[tag])

    @rule(position=st.integers(0, 10_000), pin=st.booleans())
    def pin_or_unpin(self, position: int, pin: bool) -> None:
        candidates = [m for m in self.ready.messages if not is_summary(m)]
        if not candidates:
            return
        target = candidates[position % len(candidates)]

        async def change() -> None:  # in the loop, as an application does (the pin is stored in a task)
            if pin:
                self.ready.pin_message(target.id)
            else:
                self.ready.unpin_message(target.id)

        self.run(change())
        assert self.ready.context_window.get(target.id).pinned is pin
        self.set_pin(target.id, target.content if pin else None, pin)

    @rule(goal=st.one_of(st.none(), st.integers(1, 2000)))
    def compress(self, goal: int | None) -> None:
        self.attempt(self.ready.compress_context(goal))
        self.learn()

    @rule(
        calls=st.lists(st.tuples(tool_names, st.integers(0, 400)), min_size=1, max_size=3),
        spec=text_spec,
        mode=st.sampled_from(["run", "leave", "run_new"]),
    )
    def model_calls_tools(
        self, calls: list[tuple[str, int]], spec: tuple[int, int, str, bool], mode: str
    ) -> None:
        """The model answers with tool calls: run them now, leave them pending, or let execute add them."""
        made = []
        for name, words in calls:
            number = next(self.numbers)
            call_id = f"call_{number}" if number % 3 else f"functions.{name}:{number}"
            made.append(ToolCall(id=call_id, name=name, arguments={"tag": self.tag(), "n": words}))
        content = self.text(spec)
        if mode == "run_new":
            if self.attempt(self.ready.execute_tool_calls(made, content=content)) is not None:
                self.learn()
            return
        if self.attempt(self.ready.add_message("assistant", content, tool_calls=made)) is None:
            return
        self.pending.extend(call.id for call in made)
        self.learn()
        if mode == "run":
            self.run_pending([call.id for call in made])

    def run_pending(self, call_ids: list[str]) -> None:
        calls = [call for call in self.ready.pending_tool_calls() if call.id in call_ids]
        results = self.attempt(self.ready.execute_tool_calls(calls))
        if results is None:
            return
        assert [result.call_id for result in results] == [call.id for call in calls]
        for call in calls:
            self.pending.remove(call.id)
            self.answered_now.add(call.id)
        self.learn()

    @precondition(lambda self: bool(self.pending))
    @rule(count=st.integers(1, 3))
    def execute_pending(self, count: int) -> None:
        self.run_pending(self.pending[:count])

    @precondition(lambda self: bool(self.pending))
    @rule(spec=text_spec)
    def answer_by_hand(self, spec: tuple[int, int, str, bool]) -> None:
        call_id = self.pending[0]
        content = self.text(spec, None if spec[3] else self.tag())
        answer = self.ready.add_message("tool", content, tool_call_id=call_id)
        if self.attempt(answer, invalid=not content) is None:
            return
        self.pending.remove(call_id)
        self.answered_now.add(call_id)
        self.learn()

    @precondition(lambda self: bool(self.pending))
    @rule(every=st.booleans())
    def cancel(self, every: bool) -> None:
        chosen = None if every else self.pending[-1:]
        results = self.attempt(self.ready.cancel_tool_calls(chosen))
        if results is None:
            return
        answered = [result.call_id for result in results]
        assert answered == (list(self.pending) if every else chosen)
        for call_id in answered:
            self.pending.remove(call_id)
        self.answered_now.update(answered)
        self.learn()

    @rule(
        calls=st.lists(st.tuples(tool_names, st.integers(0, 400)), min_size=1, max_size=3),
        role=st.sampled_from(["user", "user", "assistant", "system"]),
        spec=text_spec,
        priority=priorities,
        pinned=st.booleans(),
        then=st.sampled_from(["talk", "talk", "close"]),
    )
    def talk_while_tools_run(
        self,
        calls: list[tuple[str, int]],
        role: str,
        spec: tuple[int, int, str, bool],
        priority: str,
        pinned: bool,
        then: str,
    ) -> None:
        """Someone speaks (or the manager closes) while the model's tool calls run."""
        made = [
            ToolCall(id=f"call_{next(self.numbers)}", name=name, arguments={"tag": self.tag(), "n": words})
            for name, words in calls
        ]
        tag = self.tag()
        content = self.text(spec, tag)
        manager = self.ready

        async def scenario() -> bool:
            running = asyncio.ensure_future(manager.execute_tool_calls(made))
            for _ in range(3):
                await asyncio.sleep(0)  # the calls are added, the tools start
            added = False
            if then == "close":
                await manager.cleanup()  # waits for the tools, stores their results
            else:
                try:
                    await manager.add_message(role, content, priority=priority, pinned=pinned)
                    added = True
                except ContextBudgetError:
                    pass
            with contextlib.suppress(ContextBudgetError):  # no room for the calls: nothing ran
                await running
            return added

        added = self.run(scenario())
        if then == "close":
            self.manager = self.run(self.open_manager())
            self.resumes += 1
        # results that found no room (protected messages added meanwhile) leave their calls pending
        pending = {call.id for call in self.ready.pending_tool_calls()}
        self.pending.extend(call.id for call in made if call.id in pending)
        self.answered_now.update(call.id for call in made if call.id not in pending)
        self.learn()
        if added:
            self.resolve([tag])
            if role == "system" or priority == "critical":
                self.always_kept.add(self.ids_of_tags[tag])
            if pinned:
                self.pinned[self.ids_of_tags[tag]] = None
            if role == "user":
                self.latest_user, self.latest_user_own = self.ids_of_tags[tag], None

    @rule(
        ops=st.lists(
            st.one_of(
                st.tuples(st.just("add"), roles, text_spec, priorities, st.booleans()),
                st.tuples(st.just("pin"), st.integers(0, 10_000), st.booleans()),
                st.tuples(st.just("compress"), st.one_of(st.none(), st.integers(1, 2000))),
                st.tuples(st.just("batch"), roles, text_spec, roles, text_spec),
            ),
            min_size=2,
            max_size=6,
        )
    )
    def concurrent_burst(self, ops: list[tuple[Any, ...]]) -> None:
        """Several adds, batches, pins and compressions at once on the one manager (one group commit)."""
        manager = self.ready
        added: dict[str, tuple[str, str]] = {}  # tag -> (role, priority) of the adds that succeeded
        pinned_adds: list[str] = []  # tags of the adds with pinned=True that succeeded
        pins: list[tuple[str, str, bool]] = []  # (id, text, pinned) of the pin calls, in order

        async def one(op: tuple[Any, ...]) -> None:
            await asyncio.sleep(0)
            kind = op[0]
            if kind == "add":
                _, role, spec, priority, pinned = op
                tag = self.tag()
                await manager.add_message(role, self.text(spec, tag), priority=priority, pinned=pinned)
                added[tag] = (role, priority)
                if pinned:
                    pinned_adds.append(tag)
            elif kind == "batch":
                tags = [self.tag(), self.tag()]
                await manager.add_messages(
                    [
                        {"role": op[1], "content": self.text(op[2], tags[0])},
                        {"role": op[3], "content": self.text(op[4], tags[1])},
                    ]
                )
                added[tags[0]] = (op[1], "normal")
                added[tags[1]] = (op[3], "normal")
            elif kind == "pin":
                candidates = [m for m in manager.messages if not is_summary(m)]
                if candidates:
                    target = candidates[op[1] % len(candidates)]
                    (manager.pin_message if op[2] else manager.unpin_message)(target.id)
                    pins.append((target.id, target.content, op[2]))
            else:
                await manager.compress_context(op[1])

        async def burst() -> list[Any]:
            return await asyncio.gather(*(one(op) for op in ops), return_exceptions=True)

        self.interleaved = True
        for outcome in self.run(burst()):
            if isinstance(outcome, BaseException) and not isinstance(outcome, ContextBudgetError):
                raise outcome
        self.learn()
        self.resolve(list(added))
        for tag, (role, priority) in added.items():
            if role == "system" or priority == "critical":
                self.always_kept.add(self.ids_of_tags[tag])
        for tag in pinned_adds:  # a pin call on one of them came after its add (it needs the message)
            self.pinned[self.ids_of_tags[tag]] = None
        for message_id, text, pin in pins:
            self.set_pin(message_id, text, pin)
        users = {self.ids_of_tags[tag] for tag, (role, _) in added.items() if role == "user"}
        if users:  # the newest of them is the newest request: the last user message in the window
            newest = [m.id for m in manager.messages if m.role is Role.USER][-1]
            assert newest in users, "the newest user request of the burst was evicted"
            self.latest_user, self.latest_user_own = newest, None

    @rule(budget=st.integers(20, 2000))
    def export_within_budget(self, budget: int) -> None:
        manager = self.ready
        before = self.state()
        try:
            openai = manager.get_context(format="openai", budget=budget)
            anthropic = manager.get_context(format="anthropic", budget=budget)
        except ContextBudgetError:
            return
        finally:
            assert self.state() == before
        assert openai_violations(openai) == []
        assert anthropic_violations(anthropic) == []
        view = manager.context_window.select(budget)
        assert sum(m.token_count for m in view) + (REPLY_PRIMING_TOKENS if view else 0) <= budget

    @rule(now=st.integers(0, 3))
    def reload(self, now: int) -> None:
        if now:  # (rarer than the other steps)
            return
        before, version = self.state(), self.stored_version()
        self.run(self.ready.reload())
        assert self.state() == before
        assert self.ready.conversation_version == version

    @rule(now=st.integers(0, 2))
    def close_and_resume(self, now: int) -> None:
        if now:  # (rarer than the other steps)
            return
        before, version = self.state(), self.stored_version()
        self.run(self.ready.cleanup())
        self.manager = None
        self.manager = self.run(self.open_manager())
        self.resumes += 1
        assert self.state() == before
        assert self.ready.conversation_version == version
        # what compressions evicted is in memory once written (the new manager writes what was left)
        self.run(self.ready.flush())
        self.check_memory(everything=True)

    # -- invariants -----------------------------------------------------------------------------------

    def check_memory(self, *, everything: bool = False) -> None:
        """Every message seen is in the window, queued for memory, or in memory with its full text."""
        window = self.ready.context_window
        present = {m.id: m for m in window.messages}
        queued = {m.id for m in window.evicted_messages}
        for message_id, original in self.originals.items():
            if not self.texts[message_id].strip():
                continue  # nothing to remember
            kept = present.get(message_id)
            if kept is not None and TRUNCATED_METADATA_KEY not in kept.metadata:
                continue
            if message_id in queued or (message_id in self.in_memory and not everything):
                continue
            memory = self.run(
                self.ready.memory_manager.get_memory(message_memory_id(CONVERSATION, message_id))
            )
            assert memory is not None, f"{original.role.value} message {message_id} was lost"
            assert memory.content == self.texts[message_id]
            self.in_memory.add(message_id)

    @invariant()
    def window_keeps_its_promises(self) -> None:
        if self.manager is None:
            return
        manager = self.ready
        window = manager.context_window
        messages = window.messages
        # the budget, and an exact total
        expected = sum(COUNTER.count_message(m) for m in messages) + (REPLY_PRIMING_TOKENS if messages else 0)
        assert window.token_count == expected <= window.max_tokens
        assert all(m.token_count == COUNTER.count_message(m) for m in messages)
        assert sum(1 for m in messages if is_summary(m)) <= 1
        ids = {m.id for m in messages}
        # system, critical and pinned messages stay, whole; no other message is pinned
        assert self.pinned.keys() <= ids, self.pinned.keys() - ids
        assert {m.id for m in messages if m.pinned} == self.pinned.keys()
        for message_id, text in self.pinned.items():
            assert window.get(message_id).content == (text or self.originals[message_id].content)
        assert self.always_kept <= ids, self.always_kept - ids
        for message in messages:
            if message.id in self.always_kept:
                original = self.originals[message.id]
                assert message.role is Role.SYSTEM or message.priority is Priority.CRITICAL
                assert message.content == original.content
        # tool calls: results right after their call (a unit together), pending calls never evicted
        assert window.pending_tool_calls == frozenset(self.pending)
        for position, message in enumerate(messages):
            if message.role is not Role.TOOL:
                continue
            previous = messages[position - 1] if position else None
            assert previous is not None, "a tool result opens the window"
            if previous.role is Role.TOOL:
                previous = next(m for m in reversed(messages[:position]) if m.role is not Role.TOOL)
            assert message.tool_call_id in {call.id for call in previous.tool_calls}, (
                f"tool result {message.tool_call_id} is not right after its call"
            )
        answered = {m.tool_call_id for m in messages if m.role is Role.TOOL}
        for message in messages:
            for call in message.tool_calls:
                assert call.id in answered or call.id in self.pending, f"call {call.id} lost its result"
        # the newest user request: present, its start and end readable
        if self.latest_user is not None:
            assert self.latest_user in ids, "the newest user request was evicted"
            kept = window.get(self.latest_user)
            original = self.originals[self.latest_user]
            if TRUNCATED_METADATA_KEY in kept.metadata:
                # its start and end, and min(its size, max_tokens // 4) of its text when the room allows
                full = dataclasses.replace(original)
                object.__setattr__(full, "token_count", COUNTER.count_message(full))
                model = SimpleNamespace(latest_user=kept.id, full_text={kept.id: full.content})
                # a unit answered by this step was waiting for its result when it was planned: it stays
                # (rule 2) even if the request then gets less than its quarter
                planned = SimpleNamespace(
                    messages=window.messages,
                    get=window.get,
                    max_tokens=window.max_tokens,
                    pending_tool_calls=window.pending_tool_calls | self.answered_now,
                )
                # (after several compressions in one step, the request's cut by an earlier one, made with
                # less room, cannot grow back: only its start and end are checked)
                several = len(manager.compression_history) - self.compressions > 1
                # (nor after a burst: an unpin after the compression may have made room it did not have)
                own_before = 0 if several or self.interleaved else self.latest_user_own
                check_newest_request_is_readable(planned, model, [full], own_before)  # type: ignore[arg-type]
                head, tail = split_cut(kept.content)
                own = COUNTER.count(head) + COUNTER.count(tail)
            else:
                assert kept.content == original.content
                own = COUNTER.count(kept.content)
            self.latest_user_own = own
        self.answered_now = set()
        self.interleaved = False
        self.compressions = len(manager.compression_history)
        # exports follow the providers' rules
        assert openai_violations(manager.get_context(format="openai")) == []
        assert anthropic_violations(manager.get_context(format="anthropic")) == []
        self.learn()
        self.check_memory()

    def teardown(self) -> None:
        if self.manager is not None:
            history = self.ready.compression_history
            event(f"compressions: {min(len(history), 10)}{'+' if len(history) >= 10 else ''}")
            event(f"resumes: {min(self.resumes, 3)}{'+' if self.resumes >= 3 else ''}")
            if any(TRUNCATED_METADATA_KEY in m.metadata for m in self.originals.values()):
                event("a message cut")
        try:
            if self.manager is not None:
                self.run(self.manager.cleanup())
        finally:
            self.manager = None
            self.loop.close()
            shutil.rmtree(self.directory, ignore_errors=True)


PersistedManagerMachine.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestPersistedManager = PersistedManagerMachine.TestCase
