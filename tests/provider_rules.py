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
  within a request (``messages.N.content.M: `tool_use` ids must be unique``); ``system`` is a string or a
  list of text blocks (none of whitespace only).
* Anthropic prompt caching: at most 4 blocks with ``cache_control`` in a request, tools, system and
  messages together (``A maximum of 4 blocks with cache_control may be provided. Found 5.``); a breakpoint
  of a longer ``ttl`` never after one of a shorter, in the order tools, system, messages (a ``"1h"`` one
  after a ``"5m"`` one is refused; no ``ttl`` is ``"5m"``); none on a thinking block, nor on a text block of
  whitespace only (``cache_control cannot be set for empty text blocks``).
* Anthropic extended thinking with tool use: an assistant turn with ``tool_use`` blocks that holds
  thinking must start with a ``thinking`` or ``redacted_thinking`` block (``messages.1.content.0.type:
  Expected `thinking` or `redacted_thinking`, but found `tool_use`. When `thinking` is enabled, a final
  `assistant` message must start with a thinking block``); a ``thinking`` block has a string ``thinking``
  and a ``signature``, a ``redacted_thinking`` block its ``data``, and neither is in a user turn.
* Names and ids (HTTP 400 otherwise): OpenAI ``messages[].name`` and ``tool_calls[].function.name`` match
  ``^[a-zA-Z0-9_-]{1,64}$``; an Anthropic ``tool_use`` ``id`` (and the ``tool_use_id`` answering it) matches
  ``^[a-zA-Z0-9_-]+$``, and its ``name``, the name of a tool definition, ``^[a-zA-Z0-9_-]{1,64}$``.
* OpenAI ``tool_calls[].id`` (so the ``tool_call_id`` quoting it) is at most 40 characters: ``Invalid
  'messages[2].tool_calls[0].id': string too long. Expected a string with maximum length 40, but got a
  string with length 44 instead.`` (``code: string_above_max_length``; ids of gateways, other providers'
  ids after a switch of model).
* OpenAI Responses API ``input``: role messages ``{"role": "system" | "developer" | "user" | "assistant",
  "content": str}``; ``{"type": "function_call", "call_id", "name", "arguments"}`` items (a JSON string
  of an object; the name as for functions above); ``{"type": "function_call_output", "call_id", "output"}``
  answering a ``function_call`` before it (``No tool call found for function call output with call_id
  ...``), and every ``function_call`` answered (``No tool output found for function call call_...``).
* Shapes (OpenAI: ``Invalid type for 'messages[N].content'`` / ``Invalid value for 'content': expected a
  string, got null``; ``[] is too short - 'messages.N.tool_calls'``; ``function.arguments`` is a JSON
  *string*. Anthropic: ``messages.N.role`` is ``user`` or ``assistant``; ``tool_use.input: Input should
  be a valid dictionary``; ``is_error`` a boolean): content is a string, ``None`` only for an assistant
  message with tool calls; ``tool_calls`` is non-empty when present, each ``{"type": "function"}`` with
  string arguments.
"""

from __future__ import annotations

import json
import re
from typing import Any

NAME_PATTERN = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
"""OpenAI message and function names; Anthropic tool names."""
ANTHROPIC_TOOL_USE_ID_PATTERN = re.compile(r"^[a-zA-Z0-9_-]+$")
"""Anthropic ``tool_use.id`` (so ``tool_result.tool_use_id``)."""
OPENAI_CALL_ID_MAX_CHARS = 40
"""Longest OpenAI Chat Completions ``tool_calls[].id`` (``string_above_max_length`` beyond)."""
_THINKING_TYPES = ("thinking", "redacted_thinking")
OPENAI_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


def openai_call_id_breaks(value: object) -> bool:
    """Whether the OpenAI Chat Completions API refuses ``value`` as a tool call id (or ``tool_call_id``)."""
    return not isinstance(value, str) or not value or len(value) > OPENAI_CALL_ID_MAX_CHARS


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
        problems.extend(_openai_shape_problems(position, message))
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


def _openai_shape_problems(position: int, message: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    role = message.get("role")
    if role not in OPENAI_ROLES:
        problems.append(f"{position}: role {role!r} is not one of {sorted(OPENAI_ROLES)}")
    calls = message.get("tool_calls")
    content = message.get("content")
    if not isinstance(content, str) and not (content is None and role == "assistant" and calls):
        problems.append(f"{position}: content {content!r} is not a string (null only with tool_calls)")
    if calls is not None and (role != "assistant" or not isinstance(calls, list) or not calls):
        problems.append(f"{position}: tool_calls {calls!r} (a non-empty list, on an assistant message)")
    for call in calls if isinstance(calls, list) else ():
        if call.get("type") != "function" or not isinstance(call["function"].get("arguments"), str):
            problems.append(f"{position}: tool call {call!r} is not a function call with string arguments")
        if openai_call_id_breaks(call.get("id")):
            problems.append(f"{position}: tool call id {call.get('id')!r} (at most 40 characters)")
    if role == "tool" and openai_call_id_breaks(message.get("tool_call_id")):
        problems.append(f"{position}: tool_call_id {message.get('tool_call_id')!r} (at most 40 characters)")
    return problems


RESPONSES_ROLES = frozenset({"system", "developer", "user", "assistant"})


def openai_responses_violations(items: list[dict[str, Any]]) -> list[str]:
    """Every broken rule of an OpenAI Responses API ``input`` list (empty when the API would accept it)."""
    problems: list[str] = []
    called: set[str] = set()
    answered: set[str] = set()
    for position, item in enumerate(items):
        kind = item.get("type", "message")
        if kind == "message":
            if item.get("role") not in RESPONSES_ROLES:
                problems.append(
                    f"{position}: role {item.get('role')!r} is not one of {sorted(RESPONSES_ROLES)}"
                )
            if not isinstance(item.get("content"), str):
                problems.append(f"{position}: content {item.get('content')!r} is not a string")
            extra = set(item) - {"role", "content", "type"}
            if extra:
                problems.append(f"{position}: keys {sorted(extra)} are not those of an input message")
        elif kind == "function_call":
            call_id = item.get("call_id")
            if not isinstance(call_id, str) or not call_id:
                problems.append(f"{position}: call_id {call_id!r}")
            elif call_id in called:
                problems.append(f"{position}: call_id {call_id!r} made twice")
            else:
                called.add(call_id)
            if _breaks(NAME_PATTERN, item.get("name")):
                problems.append(
                    f"{position}: name {item.get('name')!r} does not match {NAME_PATTERN.pattern}"
                )
            arguments = item.get("arguments")
            if not isinstance(arguments, str) or not isinstance(_json_object(arguments), dict):
                problems.append(f"{position}: arguments {arguments!r} are not a JSON object string")
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if call_id not in called or call_id in answered:
                problems.append(
                    f"{position}: No tool call found for function call output with call_id {call_id}"
                )
            answered.add(call_id)  # type: ignore[arg-type]
            if not isinstance(item.get("output"), str):
                problems.append(f"{position}: output {item.get('output')!r} is not a string")
        else:
            problems.append(f"{position}: item type {kind!r} is not one the exporter makes")
    for call_id in sorted(called - answered):
        problems.append(f"end: No tool output found for function call {call_id}")
    return problems


def _json_object(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _anthropic_shape_problems(turns: list[dict[str, Any]]) -> list[str]:
    problems: list[str] = []
    for position, turn in enumerate(turns):
        if turn.get("role") not in ("user", "assistant"):
            problems.append(f"{position}: role {turn.get('role')!r} is not 'user' or 'assistant'")
        if not isinstance(turn.get("content"), list):
            problems.append(f"{position}: content is not a list of blocks")
            continue
        for block in turn["content"]:
            kind = block.get("type")
            if kind == "text" and not isinstance(block.get("text"), str):
                problems.append(f"{position}: text block {block!r} without a string text")
            elif kind == "tool_use" and not isinstance(block.get("input"), dict):
                problems.append(f"{position}: tool_use input {block.get('input')!r} is not an object")
            elif kind == "tool_result":
                if "content" in block and not isinstance(block["content"], str | list):
                    problems.append(f"{position}: tool_result content {block['content']!r}")
                if "is_error" in block and not isinstance(block["is_error"], bool):
                    problems.append(
                        f"{position}: tool_result is_error {block['is_error']!r} is not a boolean"
                    )
            elif kind == "thinking" and not (
                isinstance(block.get("thinking"), str) and isinstance(block.get("signature"), str)
            ):
                problems.append(f"{position}: thinking block {block!r} without its text and signature")
            elif kind == "redacted_thinking" and not isinstance(block.get("data"), str):
                problems.append(f"{position}: redacted_thinking block {block!r} without its data")
            elif kind not in ("text", "tool_use", "tool_result", "thinking", "redacted_thinking"):
                problems.append(f"{position}: block type {kind!r} is not one the exporter makes")
            if kind == "tool_use" and turn.get("role") != "assistant":
                problems.append(f"{position}: tool_use in a {turn.get('role')} turn")
            if kind == "tool_result" and turn.get("role") != "user":
                problems.append(f"{position}: tool_result in a {turn.get('role')} turn")
            if kind in _THINKING_TYPES and turn.get("role") != "assistant":
                problems.append(f"{position}: {kind} in a {turn.get('role')} turn")
        kinds = [block.get("type") for block in turn["content"]]
        if (
            turn.get("role") == "assistant"
            and "tool_use" in kinds
            and any(kind in _THINKING_TYPES for kind in kinds)
            and kinds[0] not in _THINKING_TYPES
        ):
            problems.append(
                f"{position}: Expected `thinking` or `redacted_thinking`, but found `{kinds[0]}` "
                "(an assistant turn with tool_use and thinking must start with its thinking)"
            )
    return problems


_CACHE_TTL_SECONDS = {"5m": 300, "1h": 3600}


def anthropic_cache_problems(body: dict[str, Any]) -> list[str]:
    """The broken prompt-caching rules of an Anthropic request body (tools, system, messages in order)."""
    problems: list[str] = []
    blocks: list[tuple[str, dict[str, Any]]] = [
        (f"tools[{n}]", tool) for n, tool in enumerate(body.get("tools", []))
    ]
    if isinstance(body.get("system"), list):
        blocks.extend((f"system[{n}]", block) for n, block in enumerate(body["system"]))
    for position, turn in enumerate(body.get("messages", [])):
        if isinstance(turn.get("content"), list):
            blocks.extend((f"messages[{position}].content[{n}]", b) for n, b in enumerate(turn["content"]))
    marked = [(where, block) for where, block in blocks if "cache_control" in block]
    if len(marked) > 4:
        problems.append(f"A maximum of 4 blocks with cache_control may be provided. Found {len(marked)}.")
    shortest = None
    for where, block in marked:
        cache_control = block["cache_control"]
        if not isinstance(cache_control, dict) or cache_control.get("type") != "ephemeral":
            problems.append(f"{where}: cache_control {cache_control!r} is not {{'type': 'ephemeral', ...}}")
            continue
        if set(cache_control) - {"type", "ttl"}:
            problems.append(f"{where}: cache_control {cache_control!r}: Extra inputs are not permitted")
        ttl = _CACHE_TTL_SECONDS.get(cache_control.get("ttl", "5m"))
        if ttl is None:
            problems.append(f"{where}: cache_control ttl {cache_control.get('ttl')!r} is not '5m' or '1h'")
        elif shortest is not None and ttl > shortest:
            problems.append(f"{where}: a cache_control ttl of {ttl} s after one of {shortest} s")
        else:
            shortest = ttl if shortest is None else min(shortest, ttl)
        if block.get("type") in _THINKING_TYPES:
            problems.append(f"{where}: cache_control on a {block['type']} block")
        if block.get("type") == "text" and not block.get("text", "").strip():
            problems.append(f"{where}: cache_control cannot be set for empty text blocks")
    return problems


def anthropic_violations(body: dict[str, Any]) -> list[str]:
    """Every broken rule of an Anthropic request body (empty when the API would accept it)."""
    problems: list[str] = []
    turns = body["messages"]
    problems.extend(_anthropic_shape_problems(turns))
    system = body.get("system")
    if "system" in body and isinstance(system, list):
        for block in system:
            if block.get("type") != "text" or not isinstance(block.get("text"), str):
                problems.append(f"system block {block!r} is not a text block")
            elif not block["text"].strip():
                problems.append("a system text block of whitespace only")
    elif "system" in body and not isinstance(system, str):
        problems.append(f"system {system!r} is not a string or a list of text blocks")
    elif "system" in body and not system.strip():
        problems.append("a system text of whitespace only")
    problems.extend(anthropic_cache_problems(body))
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
