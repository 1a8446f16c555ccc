"""The OpenAI and Anthropic rules for tool calls and results, checked on exported requests.

Written from the providers' API documentation (not from our exporter), so tests can hold any export
against them:

* OpenAI Chat Completions: an assistant message with ``tool_calls`` must be followed by one ``tool``
  message per call id, before any other message; a ``tool`` message must answer a call of the assistant
  message right before its run of tool messages.
* Anthropic Messages: at least one message; turns alternate and start with the user; every ``tool_use``
  block of an assistant turn needs a ``tool_result`` block in the very next user turn, and those
  ``tool_result`` blocks come first in that turn; a ``tool_result`` must answer a ``tool_use`` of the turn
  just before; a text block is not whitespace only; the final assistant content of a request does not end
  with whitespace; the top-level ``system`` text is not whitespace only; ``tool_use`` ids are unique
  within a request (``messages.N.content.M: `tool_use` ids must be unique``).
* Names and ids (HTTP 400 otherwise): OpenAI ``messages[].name`` and ``tool_calls[].function.name`` match
  ``^[a-zA-Z0-9_-]{1,64}$``; an Anthropic ``tool_use`` ``id`` (and the ``tool_use_id`` answering it) matches
  ``^[a-zA-Z0-9_-]+$``, and its ``name``, the name of a tool definition, ``^[a-zA-Z0-9_-]{1,64}$``.
"""

from __future__ import annotations

import re
from typing import Any

NAME_PATTERN = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
"""OpenAI message and function names; Anthropic tool names."""
ANTHROPIC_TOOL_USE_ID_PATTERN = re.compile(r"^[a-zA-Z0-9_-]+$")
"""Anthropic ``tool_use.id`` (so ``tool_result.tool_use_id``)."""


def _breaks(pattern: re.Pattern[str], value: object) -> bool:
    # fullmatch: the whole value (a "$" alone would also match before a final newline)
    return not isinstance(value, str) or pattern.fullmatch(value) is None


def openai_violations(messages: list[dict[str, Any]]) -> list[str]:
    """Every broken rule of an OpenAI ``messages`` list (empty when the API would accept it)."""
    problems: list[str] = []
    open_calls: set[str] = set()  # calls of the last assistant message still waiting for their tool message
    answerable: set[str] = set()
    for position, message in enumerate(messages):
        role = message["role"]
        if "name" in message and _breaks(NAME_PATTERN, message["name"]):
            problems.append(f"{position}: name {message['name']!r} does not match {NAME_PATTERN.pattern}")
        for call in message.get("tool_calls") or ():
            function_name = call["function"]["name"]
            if _breaks(NAME_PATTERN, function_name):
                problems.append(
                    f"{position}: function name {function_name!r} does not match {NAME_PATTERN.pattern}"
                )
        if role == "tool":
            call_id = message.get("tool_call_id")
            if call_id not in answerable:
                problems.append(f"{position}: tool message for {call_id!r} does not follow its call")
            open_calls.discard(call_id)  # type: ignore[arg-type]
            answerable.discard(call_id)  # type: ignore[arg-type]
            continue
        if open_calls:
            problems.append(f"{position}: {role} message before the results of {sorted(open_calls)}")
        open_calls, answerable = set(), set()
        if role == "assistant" and message.get("tool_calls"):
            ids = [call["id"] for call in message["tool_calls"]]
            open_calls, answerable = set(ids), set(ids)
    if open_calls:
        problems.append(f"end: calls {sorted(open_calls)} have no result")
    return problems


def anthropic_violations(body: dict[str, Any]) -> list[str]:
    """Every broken rule of an Anthropic request body (empty when the API would accept it)."""
    problems: list[str] = []
    turns = body["messages"]
    if "system" in body and not body["system"].strip():
        problems.append("a system text of whitespace only")
    if not turns:
        problems.append("no messages (at least one is required)")
    if turns and turns[0]["role"] != "user":
        problems.append("the first turn is not the user's")
    last_text = None
    for turn in turns:
        for block in turn["content"]:
            if block["type"] == "text":
                if not block["text"].strip():
                    problems.append("a text block of whitespace only")
                last_text = (turn["role"], block["text"])
            else:
                last_text = None
            if block["type"] == "tool_use":
                if _breaks(ANTHROPIC_TOOL_USE_ID_PATTERN, block["id"]):
                    problems.append(
                        f"tool_use id {block['id']!r} does not match {ANTHROPIC_TOOL_USE_ID_PATTERN.pattern}"
                    )
                if _breaks(NAME_PATTERN, block["name"]):
                    problems.append(f"tool_use name {block['name']!r} does not match {NAME_PATTERN.pattern}")
            content = block.get("content")
            if block["type"] == "tool_result" and isinstance(content, str) and not content.strip():
                problems.append("a tool_result with whitespace-only content")
    if (
        turns
        and turns[-1]["role"] == "assistant"
        and last_text is not None
        and last_text[1] != last_text[1].rstrip()
    ):
        problems.append("the final assistant content ends with whitespace")
    use_ids = [block["id"] for turn in turns for block in turn["content"] if block["type"] == "tool_use"]
    repeated = sorted({use_id for use_id in use_ids if use_ids.count(use_id) > 1})
    if repeated:
        problems.append(f"tool_use ids {repeated} are not unique")
    previous_uses: set[str] = set()
    previous_role = None
    for position, turn in enumerate(turns):
        role = turn["role"]
        if role == previous_role:
            problems.append(f"{position}: two {role} turns in a row")
        blocks = turn["content"]
        if not blocks:
            problems.append(f"{position}: empty turn")
        if role == "user":
            results = []
            seen_other = False
            for block in blocks:
                if block["type"] == "tool_result":
                    if seen_other:
                        problems.append(f"{position}: tool_result after other content")
                    results.append(block["tool_use_id"])
                else:
                    seen_other = True
            for use_id in results:
                if use_id not in previous_uses:
                    problems.append(
                        f"{position}: tool_result {use_id!r} answers no tool_use of the turn before"
                    )
            missing = previous_uses - set(results)
            if missing:
                problems.append(f"{position}: tool_use {sorted(missing)} without a tool_result in this turn")
            previous_uses = set()
        else:
            if previous_uses:
                problems.append(f"{position}: assistant turn before the results of {sorted(previous_uses)}")
            previous_uses = {block["id"] for block in blocks if block["type"] == "tool_use"}
        previous_role = role
    if previous_uses:
        problems.append(f"end: tool_use {sorted(previous_uses)} without a result")
    return problems
