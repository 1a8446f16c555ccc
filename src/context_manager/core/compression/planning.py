"""Planning a compression: which units go, which kept messages are cut and by how much, the summary's room.

The rules, in order of precedence:

1. system, pinned and critical messages are kept whole (their units too); if they cannot fit, with the
   messages of rule 2 cut as far as allowed, the plan raises :class:`ContextBudgetError`;
2. the newest unit, the newest user message and every unit still waiting for tool results are kept; they
   may be cut to head + marker + tail, the newest user message never below a readable head and tail;
3. other units are evicted whole, lowest priority first and oldest first within a priority, until the
   window fits its goal with room for the summary;
4. if the kept messages of rule 2 are still too large, they are cut *in proportion*: each keeps the same
   share of what it has beyond its floor, every one a real head and tail when the room allows, and the
   newest user message at least ``min(its size, max_tokens // 4)`` tokens of its own text (the summary's
   room is given up before that).

The goal is the target size, or ``max_tokens`` when rules 1-2 (with the newest request's quarter) need more.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from context_manager.core.compression.summarizer import SUMMARY_METADATA_KEY
from context_manager.core.compression.truncation import (
    min_keeping_tokens,
    min_readable_tokens,
    min_truncated_tokens,
    truncate_message,
)
from context_manager.core.compression.units import Unit, UnitIndex
from context_manager.core.errors import ContextBudgetError
from context_manager.core.messages import Message, Role
from context_manager.core.tokens import REPLY_PRIMING_TOKENS, TokenCounter

__all__ = ["MIN_SUMMARY_TOKENS", "CompressionPlan", "EvictionDecision", "decide_eviction", "plan_compression"]

MIN_SUMMARY_TOKENS = 16
"""A summary message smaller than this (framing included) is not worth adding."""


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
    latest_request: Message | None = None
    """The newest user message, full text (also when this plan cuts it); ``None`` if there is none."""

    @property
    def summary_inputs(self) -> list[Message]:
        """What the summarizer reads: the previous summary first, then the evicted messages."""
        if self.previous_summary is None:
            return list(self.evicted)
        return [self.previous_summary, *self.evicted]


@dataclass(slots=True)
class EvictionDecision:
    """The arithmetic part of a plan (no message copied yet): what :func:`decide_eviction` returns."""

    evicted_units: list[Unit]
    """Units to evict, in eviction order."""
    cuts: list[tuple[Message, int]]
    """Kept messages to cut, each with the tokens its cut copy may cost, in window order."""
    total: int
    """Tokens of what stays (reply priming included, summary excluded) before the cuts."""
    goal: int
    """The size aimed for."""
    latest_request: Message | None
    """The newest user message (original)."""


def decide_eviction(
    index: UnitIndex,
    extra: Message | None,
    *,
    target_tokens: int,
    max_tokens: int,
    counter: TokenCounter,
    summary_max_tokens: int = 200,
    allow_summary: bool = True,
) -> EvictionDecision:
    """Decide which units of ``index`` (plus ``extra``, a message about to be added) go and what is cut.

    Reads the index without changing it; costs O(units evicted + messages kept by rule 2).

    Raises:
        ContextBudgetError: protected messages plus the rule-2 messages at their floors exceed ``max_tokens``.
    """
    joined: Unit | None = None
    if extra is not None and extra.role is Role.TOOL and extra.tool_call_id is not None:
        joined = index.unit_of_call(extra.tool_call_id)
    starts_unit = extra is not None and joined is None

    # Rule 2 units: (real unit or None for extra's own, its messages, protected?)
    kept: dict[int, tuple[list[Message], bool]] = {}
    fixed = REPLY_PRIMING_TOKENS + index.protected_tokens

    def keep(unit: Unit) -> None:
        if unit.seq in kept:
            return
        messages = unit.messages
        protected = unit.protected > 0
        if unit is joined:
            assert extra is not None
            messages = [*messages, extra]
            protected = protected or extra.is_protected
        kept[unit.seq] = (messages, protected)

    if joined is not None:
        assert extra is not None
        keep(joined)
        if joined.protected:
            fixed += extra.token_count
        elif extra.is_protected:
            fixed += joined.tokens + extra.token_count
    own: tuple[list[Message], bool] | None = None
    if starts_unit:
        assert extra is not None
        own = ([extra], extra.is_protected)
        if extra.is_protected:
            fixed += extra.token_count
    else:
        newest = index.newest
        if newest is not None:
            keep(newest)
    latest_request: Message | None = None
    if extra is not None and extra.role is Role.USER:
        latest_request = extra
    else:
        latest_user = index.latest_user
        if latest_user is not None:
            keep(latest_user)
            latest_request = latest_user.messages[0]
    for unit in index.pending_units:
        keep(unit)

    groups = list(kept.values())
    if own is not None:
        groups.append(own)
    cuttable: list[Message] = []
    uncut = fixed  # what the rule-1 and rule-2 messages cost whole: a bound of every floor below
    empty = 0
    for messages, protected in groups:
        if protected:
            continue
        for message in messages:
            uncut += message.token_count
            if message.content:
                cuttable.append(message)
            else:
                empty += message.token_count
    request = next((message for message in cuttable if message is latest_request), None)
    quarter = max_tokens // 4

    def floors() -> tuple[int, int, int]:
        """(minimal, the newest request's floor, wanted): what rules 1-2 cost cut as far as allowed."""
        minimal = fixed + empty
        request_readable = request_floor = 0
        for message in cuttable:
            if message is request:
                request_readable = min_readable_tokens(message, counter)
                minimal += request_readable
            else:
                minimal += min_truncated_tokens(message, counter)
        if minimal > max_tokens:
            raise ContextBudgetError(
                f"max_tokens: got {max_tokens}; allowed at least {minimal}: system, pinned and critical "
                f"messages ({fixed} tokens with reply priming) plus the newest messages cut as far as "
                "allowed do not fit",
                required_tokens=minimal,
                max_tokens=max_tokens,
            )
        # The newest request's own text: at least min(its size, a quarter of max_tokens) when it is cut.
        if request is not None:
            request_floor = max(min_keeping_tokens(request, counter, quarter), request_readable)
        return minimal, request_floor, minimal + request_floor - request_readable

    # Every floor is at most the message's size: when the rule-2 messages fit the target whole, the goal
    # is the target and no floor is needed unless they must be cut (usual case: nothing to measure).
    exact = uncut > target_tokens
    request_floor = wanted = 0
    if exact:
        _, request_floor, wanted = floors()
    goal = target_tokens if wanted <= target_tokens else max_tokens
    reserve = min(summary_max_tokens, goal // 4) if allow_summary else 0
    if reserve < MIN_SUMMARY_TOKENS:
        reserve = 0

    total = REPLY_PRIMING_TOKENS + index.tokens + (extra.token_count if extra is not None else 0)
    evicted: list[Unit] = []
    if total > goal - reserve:
        for unit in index.eviction_order():
            if unit.seq in kept:
                continue
            evicted.append(unit)
            total -= unit.tokens
            if total <= goal - reserve:
                break

    cuts: list[tuple[Message, int]] = []
    if total > goal - reserve:
        # Every evictable unit is gone; cut the rule-2 messages, giving up summary room if they need it.
        if not exact:
            _, request_floor, wanted = floors()
        if wanted > goal - reserve:
            reserve = max(goal - wanted, 0)
            if reserve < MIN_SUMMARY_TOKENS:
                reserve = 0
        room = goal - reserve - (total - sum(message.token_count for message in cuttable))
        cuts = _allocate(cuttable, room, latest_request, request_floor, counter)
    return EvictionDecision(evicted, cuts, total, goal, latest_request)


def _allocate(
    cuttable: list[Message],
    room: int,
    latest_request: Message | None,
    request_floor: int,
    counter: TokenCounter,
) -> list[tuple[Message, int]]:
    """Share ``room`` tokens among ``cuttable`` messages in proportion to what each has beyond its floor."""
    sizes = [message.token_count for message in cuttable]
    if sum(sizes) <= room:
        return []
    hard = [
        min_readable_tokens(m, counter) if m is latest_request else min_truncated_tokens(m, counter)
        for m in cuttable
    ]
    readable = [min_readable_tokens(m, counter) for m in cuttable]
    wanted = [
        request_floor if m is latest_request else floor for m, floor in zip(cuttable, readable, strict=True)
    ]
    floors = wanted
    if sum(floors) > room:  # no room for a head and tail of every message: the others go down to a marker
        floors = [w if m is latest_request else h for m, w, h in zip(cuttable, wanted, hard, strict=True)]
    if sum(floors) > room:  # not even the request's quarter: it gets what is left (at least readable)
        others = sum(h for m, h in zip(cuttable, hard, strict=True) if m is not latest_request)
        floors = [
            max(h, room - others) if m is latest_request else h for m, h in zip(cuttable, hard, strict=True)
        ]
    spare = room - sum(floors)
    excess = [max(size - floor, 0) for size, floor in zip(sizes, floors, strict=True)]
    total_excess = sum(excess)
    cuts: list[tuple[Message, int]] = []
    for message, size, floor, extra in zip(cuttable, sizes, floors, excess, strict=True):
        allowance = min(size, floor + (extra * spare // total_excess if total_excess else 0))
        if allowance < size:
            cuts.append((message, allowance))
    return cuts


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

    Applies the rules of the module docstring. Every message carrying :data:`SUMMARY_METADATA_KEY` is
    folded into the new summary: the newest is the previous summary, any other one is evicted with the
    evicted messages (so its text reaches the summarizer and the eviction hook).

    Args:
        messages: The window's messages, each with its ``token_count`` set.
        target_tokens: The size to aim for (``max_tokens * compression_ratio``).
        max_tokens: The hard limit.
        counter: The token counter the window uses.
        summary_max_tokens: Upper bound of the summary message's size.
        allow_summary: ``False`` plans no summary at all (for example a read-only budget view).

    Raises:
        ContextBudgetError: protected messages (with the newest cut as far as allowed) exceed ``max_tokens``.
    """
    key = SUMMARY_METADATA_KEY
    body = [message for message in messages if key not in message.metadata]
    summaries = [message for message in messages if key in message.metadata]
    previous_summary = summaries[-1] if summaries else None
    index = UnitIndex(body)
    decision = decide_eviction(
        index,
        None,
        target_tokens=target_tokens,
        max_tokens=max_tokens,
        counter=counter,
        summary_max_tokens=summary_max_tokens,
        allow_summary=allow_summary,
    )
    replacements = cut_messages(decision.cuts, counter, decision.latest_request)
    saved = sum(
        original.token_count - replacements[original.id].token_count
        for original, _ in decision.cuts
        if original.id in replacements
    )
    gone = {message.id for unit in decision.evicted_units for message in unit.messages}
    stray = {id(message) for message in summaries[:-1]}
    evicted = [m for m in messages if (m.id in gone and key not in m.metadata) or id(m) in stray]
    kept = [replacements.get(m.id, m) for m in body if m.id not in gone]
    return finish_plan(
        decision,
        kept=kept,
        evicted=evicted,
        truncated=[original for original, _ in decision.cuts if original.id in replacements],
        previous_summary=previous_summary,
        kept_tokens=decision.total - saved,
        summary_max_tokens=summary_max_tokens,
        allow_summary=allow_summary,
    )


def cut_messages(
    cuts: Sequence[tuple[Message, int]], counter: TokenCounter, latest_request: Message | None = None
) -> dict[str, Message]:
    """Cut each message to its allowance; return message id -> cut copy (only the ones that changed).

    ``latest_request`` (the newest user message) is cut only to a copy keeping a head and a tail: when
    none fits its allowance it stays whole (and the caller, finding the cuts too large, refuses).
    """
    replacements: dict[str, Message] = {}
    for message, allowance in cuts:
        copy = truncate_message(message, allowance, counter, readable=message is latest_request)
        if copy is not None and copy is not message:
            replacements[message.id] = copy
    return replacements


def finish_plan(
    decision: EvictionDecision,
    *,
    kept: list[Message],
    evicted: list[Message],
    truncated: list[Message],
    previous_summary: Message | None,
    kept_tokens: int,
    summary_max_tokens: int,
    allow_summary: bool,
) -> CompressionPlan:
    """Assemble a :class:`CompressionPlan` once the cuts are made (the summary's room comes last)."""
    summary_index = 0  # after the leading system messages
    while summary_index < len(kept) and kept[summary_index].role is Role.SYSTEM:
        summary_index += 1
    summary_budget = 0
    if allow_summary and (evicted or previous_summary is not None):
        summary_budget = min(summary_max_tokens, decision.goal - kept_tokens)
        if summary_budget < MIN_SUMMARY_TOKENS:
            summary_budget = 0
    return CompressionPlan(
        kept=kept,
        evicted=evicted,
        truncated=truncated,
        previous_summary=previous_summary,
        summary_budget=summary_budget,
        summary_index=summary_index,
        kept_tokens=kept_tokens,
        goal_tokens=decision.goal,
        latest_request=decision.latest_request,
    )
