"""Export messages to provider formats and import the tool calls of a provider's response.

* :func:`to_openai_messages`: OpenAI Chat Completions ``messages`` (``tool_calls`` with JSON string
  arguments on assistant messages, ``role: "tool"`` with ``tool_call_id`` for results; the reasoning an
  OpenAI-compatible server sent with an assistant message, ``reasoning_content`` ..., written back as it
  came when the message keeps it: see :data:`~context_manager.core.messages.REASONING_METADATA_KEY`).
* :func:`to_openai_responses_input`: the OpenAI Responses API ``input`` list: ``{"role", "content"}``
  messages for text (``system``, ``user``, ``assistant``), a ``{"type": "function_call", "call_id", "name",
  "arguments"}`` item per call after its message's text, a ``{"type": "function_call_output", "call_id",
  "output"}`` item per result; :func:`messages_from_openai_responses` reads such items (and a response's
  ``output``) back as ``add_messages`` dicts.
* :func:`to_anthropic_messages`: Anthropic Messages ``{"system": ..., "messages": [...]}``: system messages
  joined into the top-level ``system`` (a text block each when one keeps a prompt-cache breakpoint),
  ``tool_use`` / ``tool_result`` content blocks, tool results in a user message (``"is_error": true``
  for a tool message whose metadata holds ``"is_error": True``),
  consecutive messages of one role merged into one turn (but two assistant messages that both hold
  thinking: a user turn of :data:`ANTHROPIC_CONTINUATION_TEXT` between them), thinking blocks first in
  their turn or, interleaved with the calls, in the response's order (see :attr:`Message.thinking`).
* :func:`parse_tool_calls`: the tool calls of an OpenAI response (Chat Completions or Responses API) or
  assistant message, or of an Anthropic response.

Exports always follow the providers' pairing rules, whatever the messages: each tool result goes right
after the assistant message that called it (in the order the results appear), a call without a result yet
is left out (and its assistant message too when nothing else is left in it), and a result without its
call is left out (:func:`paired_for_provider`). A call id made again in a later message (servers that
number calls per response, ``call_0`` in every turn) pairs each result with the latest call of its id
before it; the Anthropic API refusing a ``tool_use`` id seen earlier in a request, the later call gets an
id of its own there (``<id>_<hash>``), quoted by its ``tool_result``.

Ids and names the providers restrict are made valid on export (the messages keep what was given): the
OpenAI ``messages[].name`` and ``tool_calls[].function.name``, and the Anthropic ``tool_use`` ``name``, must
match ``^[a-zA-Z0-9_-]{1,64}$``; the Anthropic ``tool_use`` ``id`` (and so ``tool_result`` ``tool_use_id``)
must match ``^[a-zA-Z0-9_-]+$``; the OpenAI ``tool_calls[].id`` (and so ``tool_call_id``) is any string of
at most 40 characters. A value that already matches is exported as it is; any other becomes its
valid characters with ``_`` for each other one, plus ``_`` and the first 10 hex digits of its SHA-256 (cut to
64 or 40 characters where that is the limit, keeping the hash): ``functions.Bash:0`` becomes
``functions_Bash_0_<hash>``. The mapping is deterministic and one-to-one within an export (a clash, were one
ever to happen, takes a number after the hash), and a ``tool_use`` and its ``tool_result`` get the same id.

Exports are deterministic and depend only on the messages before them, so appending messages only
appends to the export: an OpenAI export is a list prefix of the next one, and an Anthropic export
differs at most by blocks added to its last turn (a pending tool call shows up once its result is in;
the placeholder user turn of a request with nothing but system messages is replaced by the first message;
a system message added joins the top-level ``system``, which changes then; past 4 imported
``cache_control`` breakpoints, the earliest of the turns loses its ``cache_control``).
Provider prompt caches keep hitting until the next compression.

Example:
    >>> to_openai_messages([Message.create("user", "Hi")])
    [{'role': 'user', 'content': 'Hi'}]
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, Protocol, overload

from context_manager.core.errors import InvalidArgumentError, InvalidMessageError
from context_manager.core.messages import (
    ANTHROPIC_CACHE_CONTROL_METADATA_KEY,
    CACHE_CONTROL_ALLOWED,
    REASONING_FIELDS,
    REASONING_METADATA_KEY,
    Message,
    Role,
    ToolCall,
    chat_completions_text,
    is_cache_control,
    joined_text,
    json_copy,
)

__all__ = [
    "ANTHROPIC_CONTINUATION_TEXT",
    "ProviderFormat",
    "paired_for_provider",
    "parse_tool_calls",
    "to_anthropic_messages",
    "messages_from_openai_responses",
    "to_openai_messages",
    "to_openai_responses_input",
    "to_provider_format",
]

ProviderFormat = Literal["openai", "anthropic", "openai_responses"]
"""The provider formats :func:`to_provider_format` knows."""

ANTHROPIC_CONTINUATION_TEXT = "(continuing the conversation)"
"""Text of the user turn inserted when an Anthropic export would otherwise start with the assistant."""


_THINKING_BLOCK_TYPES = frozenset({"thinking", "redacted_thinking"})
_PROVIDER_NAME = re.compile(r"[a-zA-Z0-9_-]+")
_NOT_NAME_CHARACTER = re.compile(r"[^a-zA-Z0-9_-]")
_NAME_MAX_CHARS = 64
"""Longest OpenAI ``name`` / function name (``^[a-zA-Z0-9_-]{1,64}$``): the exports cut names to it."""
_ANTHROPIC_TOOL_NAME_MAX_CHARS = 128
"""Longest Anthropic tool definition name the API takes: its HTTP 400 says ``tools.N.custom.name: String
should match pattern '^[a-zA-Z0-9_-]{1,128}$'`` (it said ``{1,64}`` until mid-2025)."""
_OPENAI_CALL_ID_MAX_CHARS = 40
"""Longest OpenAI Chat Completions ``tool_calls[].id`` (HTTP 400 ``string_above_max_length`` beyond)."""
_HASH_DIGITS = 10


def _is_valid_name(value: str, max_chars: int | None) -> bool:
    return (max_chars is None or len(value) <= max_chars) and _PROVIDER_NAME.fullmatch(value) is not None


def _valid_names(
    values: Iterable[str], max_chars: int | None = None, *, any_characters: bool = False
) -> dict[str, str]:
    """Map each value of ``values`` that breaks ``^[a-zA-Z0-9_-]+$`` (or ``max_chars``) to a valid one.

    With ``any_characters`` only the length counts (OpenAI call ids: any string of at most 40 characters).
    Values that are valid are not in the mapping (they are exported as they are); in the common case of no
    invalid value the mapping is empty. An invalid value maps to its characters with ``_`` for each one
    outside ``[a-zA-Z0-9_-]``, then ``_`` and a hash of the original (cut to ``max_chars`` keeping the
    hash), avoiding every valid value and every earlier mapping: one-to-one within the values given.
    """
    distinct = dict.fromkeys(values)
    if any_characters:
        assert max_chars is not None
        if all(len(value) <= max_chars for value in distinct):
            return {}
        taken = {value for value in distinct if len(value) <= max_chars}
        invalid = [value for value in distinct if len(value) > max_chars]
    else:
        invalid = [value for value in distinct if not _is_valid_name(value, max_chars)]
        if not invalid:
            return {}
        taken = {value for value in distinct if _is_valid_name(value, max_chars)}
    mapping: dict[str, str] = {}
    for value in invalid:
        digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_DIGITS]
        cleaned = _NOT_NAME_CHARACTER.sub("_", value)
        suffix, number = f"_{digest}", 0
        while True:
            candidate = (cleaned if max_chars is None else cleaned[: max_chars - len(suffix)]) + suffix
            if candidate not in taken:
                break
            number += 1  # a value already spelled so, or a clash of 40-bit hashes: practically never
            suffix = f"_{digest}_{number}"
        taken.add(candidate)
        mapping[value] = candidate
    return mapping


def paired_for_provider(messages: Iterable[Message]) -> list[Message]:
    """Return ``messages`` arranged as the OpenAI and Anthropic APIs require tool calls and results.

    Each tool result is moved right after the assistant message that made its call (results of one
    message keep their relative order); calls without a result are dropped from their assistant message
    (the message itself when it has no text left); results whose call is absent are dropped. Messages
    that already follow the rules come back unchanged.
    """
    ordered = list(messages)
    if not any(message.tool_calls or message.role is Role.TOOL for message in ordered):
        return ordered
    caller: dict[str, int] = {}  # call id -> position of the assistant message that made it
    repeated = False
    for position, message in enumerate(ordered):
        for call in message.tool_calls:
            if caller.setdefault(call.id, position) != position:
                repeated = True
    results: dict[int, list[Message]] = {}
    answered: set[str] = set()  # call ids answered (ids unique: the common case)
    answered_at: set[tuple[int, str]] = set()  # (position of the call's message, call id), ids repeated
    if not repeated:
        for message in ordered:
            call_id = message.tool_call_id
            if message.role is Role.TOOL and call_id is not None and call_id not in answered:
                made_at = caller.get(call_id)
                if made_at is not None:
                    answered.add(call_id)
                    results.setdefault(made_at, []).append(message)
    else:
        answered_at = _pair_repeated_ids(ordered, results)
    arranged: list[Message] = []
    for position, message in enumerate(ordered):
        if message.role is Role.TOOL:
            continue
        if message.tool_calls:
            if repeated:
                kept = tuple(call for call in message.tool_calls if (position, call.id) in answered_at)
            else:
                kept = tuple(call for call in message.tool_calls if call.id in answered)
            if len(kept) != len(message.tool_calls):
                if not kept and not message.content:
                    continue
                message = dataclasses.replace(message, tool_calls=kept)
            arranged.append(message)
            arranged.extend(results.get(position, ()))
        else:
            arranged.append(message)
    return arranged


def _pair_repeated_ids(ordered: list[Message], results: dict[int, list[Message]]) -> set[tuple[int, str]]:
    """Pair results with calls when a call id is made by several messages; fill ``results`` by position.

    A server that numbers calls per response (``call_0`` in every turn) repeats ids: each result answers
    the latest unanswered call of its id before it (else the first unanswered one after it). Returns the
    answered calls as ``(position of the call's message, call id)``.
    """
    callers: dict[str, list[int]] = {}
    for position, message in enumerate(ordered):
        for call in message.tool_calls:
            callers.setdefault(call.id, []).append(position)
    answered: set[tuple[int, str]] = set()
    for position, message in enumerate(ordered):
        call_id = message.tool_call_id
        if message.role is not Role.TOOL or call_id is None or call_id not in callers:
            continue
        open_calls = [made_at for made_at in callers[call_id] if (made_at, call_id) not in answered]
        if not open_calls:
            continue
        before = [made_at for made_at in open_calls if made_at < position]
        made_at = before[-1] if before else open_calls[0]
        answered.add((made_at, call_id))
        results.setdefault(made_at, []).append(message)
    return answered


_ROLE_TEXT = {role: role.value for role in Role}  # a dict lookup: Enum.value is a property (slow)


def _openai_message(
    message: Message, names: dict[str, str], functions: dict[str, str], ids: dict[str, str]
) -> dict[str, Any]:
    role = message.role
    if role is Role.TOOL:
        call_id = message.tool_call_id
        assert call_id is not None  # a tool message always answers a call
        return {"role": "tool", "tool_call_id": ids.get(call_id, call_id), "content": message.content}
    exported: dict[str, Any] = {"role": _ROLE_TEXT[role]}
    if role is Role.ASSISTANT and message.tool_calls:
        exported["content"] = message.content or None
        exported["tool_calls"] = [
            {
                "id": ids.get(call.id, call.id),
                "type": "function",
                "function": {"name": functions.get(call.name, call.name), "arguments": call.arguments_json()},
            }
            for call in message.tool_calls
        ]
    else:
        exported["content"] = message.content
    if message.name:
        exported["name"] = names.get(message.name, message.name)
    if message.metadata and role is Role.ASSISTANT:
        reasoning = message.metadata.get(REASONING_METADATA_KEY)
        if type(reasoning) is dict:  # a reasoning server's fields, as it sent them (reasoning_content ...)
            for key, value in reasoning.items():
                if key in REASONING_FIELDS:
                    exported[key] = json_copy(value)
    return exported


def to_openai_messages(messages: Iterable[Message]) -> list[dict[str, Any]]:
    """Return OpenAI Chat Completions messages (new dicts; safe to mutate), paired as the API requires.

    A ``name`` or a function name the API refuses (``^[a-zA-Z0-9_-]{1,64}$``), or a call id longer than
    the 40 characters it takes, is exported made valid (see the module docstring); the messages keep theirs.
    An assistant message that keeps a reasoning server's reasoning (``reasoning_content`` of DeepSeek and
    vLLM, ``reasoning`` / ``reasoning_details`` of OpenRouter, under
    :data:`~context_manager.core.messages.REASONING_METADATA_KEY`) has those fields, as they were given:
    DeepSeek's thinking mode refuses a request without the reasoning of a turn that called tools.
    """
    paired = paired_for_provider(messages)
    names = _valid_names((m.name for m in paired if m.name and m.role is not Role.TOOL), _NAME_MAX_CHARS)
    calls = [call for m in paired for call in m.tool_calls]
    functions = _valid_names((call.name for call in calls), _NAME_MAX_CHARS)
    ids = _valid_names((call.id for call in calls), _OPENAI_CALL_ID_MAX_CHARS, any_characters=True)
    return [_openai_message(message, names, functions, ids) for message in paired]


def to_openai_responses_input(messages: Iterable[Message]) -> list[dict[str, Any]]:
    """Return the OpenAI Responses API ``input`` items (new dicts), paired as the API requires.

    System, user and assistant text are ``{"role": ..., "content": text}`` messages (system messages keep
    the ``system`` role, which the API takes as it takes ``developer``; the API has no ``name`` for them:
    left out). Each tool call is a ``{"type": "function_call", "call_id", "name", "arguments"}`` item (JSON
    string arguments) after its message's text, and each result a ``{"type": "function_call_output",
    "call_id", "output"}`` item right after the calls of its message; a call without its result yet is left
    out, as in the other exports. A function name the API refuses is made valid as for Chat Completions.
    Items of the ``"openai_responses"`` export go back in through ``add_messages`` (see
    :func:`messages_from_openai_responses`).
    """
    paired = paired_for_provider(messages)
    functions = _valid_names((call.name for m in paired for call in m.tool_calls), _NAME_MAX_CHARS)
    items: list[dict[str, Any]] = []
    for message in paired:
        role = message.role
        if role is Role.TOOL:
            call_id, output = message.tool_call_id, message.content
            items.append({"type": "function_call_output", "call_id": call_id, "output": output})
            continue
        if message.content or not message.tool_calls:
            items.append({"role": _ROLE_TEXT[role], "content": message.content})
        for call in message.tool_calls:
            items.append(
                {
                    "type": "function_call",
                    "call_id": call.id,
                    "name": functions.get(call.name, call.name),
                    "arguments": call.arguments_json(),
                }
            )
    return items


class SupportsModelDump(Protocol):
    """An SDK object (pydantic model): a Responses API item of ``response.output``, say."""

    def model_dump(self, *args: Any, **kwargs: Any) -> dict[str, Any]: ...


_LANGCHAIN_ROLES = {
    "human": "user",
    "ai": "assistant",
    "system": "system",
    "tool": "tool",
    "HumanMessageChunk": "user",
    "AIMessageChunk": "assistant",
    "SystemMessageChunk": "system",
    "ToolMessageChunk": "tool",
}
"""LangChain message types (``message.type``, a chunk's its class name) and their roles; a ``ChatMessage``
(``chat``) has its own."""
_LANGCHAIN_SKIPPED_PARTS = frozenset({"tool_use", "tool_call", "function_call", "reasoning"})
"""Content blocks of a LangChain ``AIMessage`` its ``tool_calls`` carry (langchain-anthropic and the
Responses API output keep them), and its reasoning (the window keeps none, as of a Responses API output)."""


_LANGCHAIN_REFUSED = {
    "function": "FunctionMessage",
    "FunctionMessageChunk": "FunctionMessageChunk",
    "remove": "RemoveMessage",
}
"""LangChain message types the window cannot hold, and their classes (errors name them)."""
_LANGCHAIN_REFUSED_WHY = {
    "FunctionMessage": (
        "a ToolMessage (answering its AIMessage's tool call by tool_call_id): a FunctionMessage answers a "
        "legacy function_call, which has no call id to pair it with its call"
    ),
    "RemoveMessage": (
        "messages of the conversation: a RemoveMessage is LangGraph's instruction to delete the message of "
        "its id from a state, not a message (apply it to your list, or drop it, before add_messages)"
    ),
}


def _langchain_dict_fields(item: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]] | None:
    """The type and the fields of LangChain's ``messages_to_dict()`` shape, ``{"type", "data": {...}}``."""
    data = item.get("data")
    kind = item.get("type")
    if (
        len(item) == 2
        and isinstance(data, Mapping)
        and isinstance(kind, str)
        and (kind in _LANGCHAIN_ROLES or kind in _LANGCHAIN_REFUSED or kind in _LANGCHAIN_CHAT)
    ):
        return kind, data
    return None


def is_langchain_message(item: Any) -> bool:
    """Whether ``item`` is a LangChain message (``HumanMessage``, ``AIMessage`` ...) or its dump.

    Its ``model_dump()``, or its ``messages_to_dict()`` item (``{"type": "human", "data": {...}}``).
    """
    if type(item) is dict and "type" not in item:  # the common case, quickly: a role message
        return False
    if isinstance(item, Mapping):
        fields = item
        as_dict = _langchain_dict_fields(item)
        if as_dict is not None:
            fields = {**as_dict[1], "type": as_dict[0]}
    elif callable(getattr(item, "model_dump", None)) and hasattr(item, "additional_kwargs"):
        fields = {"type": getattr(item, "type", None), "role": getattr(item, "role", None)}
        fields.update(content=getattr(item, "content", None), additional_kwargs=item.additional_kwargs)
    else:
        return False
    kind = fields.get("type")
    known = (
        kind in _LANGCHAIN_ROLES
        or kind in _LANGCHAIN_REFUSED
        or (kind in _LANGCHAIN_CHAT and isinstance(fields.get("role"), str))
    )
    return known and "content" in fields and "additional_kwargs" in fields


_LANGCHAIN_CHAT = frozenset({"chat", "ChatMessageChunk"})
"""LangChain types of a message with its own ``role``."""


def messages_from_langchain(items: Sequence[Any]) -> list[Any]:
    """Read the LangChain messages of ``items`` as ``add_messages`` dicts; pass the other items through.

    One dict per message, as ``convert_to_openai_messages`` reads it: the role of its type (``human`` is
    ``user``, ``ai`` ``assistant``; a ``ChatMessage`` its role), its text (a content list's text parts and
    strings joined by a line break; an ``AIMessage``'s ``tool_use`` blocks are its ``tool_calls``, its
    thinking blocks its thinking), its ``name``, an ``AIMessage``'s ``tool_calls`` and a ``ToolMessage``'s
    ``tool_call_id`` (``status="error"`` as ``metadata={"is_error": True}``), a prompt-cache breakpoint as
    langchain-anthropic sends it (a ``cache_control`` on the last content block, or in
    ``additional_kwargs``) kept as the Anthropic import keeps one; a message holding an Anthropic turn's
    blocks (LangChain's ``convert_to_messages`` of an Anthropic export: a ``HumanMessage`` of ``tool_result``
    blocks, an ``AIMessage`` of ``tool_use`` blocks without ``tool_calls``, a ``HumanMessage`` of the
    export's :data:`ANTHROPIC_CONTINUATION_TEXT` block, left out where the export inserts one) read as that
    turn (:func:`messages_from_anthropic`); an ``AIMessage``'s
    ``additional_kwargs["reasoning_content"]`` (langchain-deepseek's) as its ``reasoning_content``. Its
    ``id``, metadata and usage are LangChain's, not the message's: left out. The messages, their
    ``model_dump()`` or their ``messages_to_dict()`` items (``{"type": "human", "data": {...}}``, as
    ``messages_from_dict`` reads them) are taken.

    Raises:
        InvalidMessageError: a content part the window cannot hold (an image, a file), an ``AIMessage``
            with ``invalid_tool_calls`` (a call whose arguments are no JSON object), a ``FunctionMessage``
            (a legacy function call's result, without the call id a tool result answers) or a
            ``RemoveMessage`` (LangGraph's deletion of a message, not a message).
    """
    converted: list[Any] = []
    for position, item in enumerate(items):
        if not is_langchain_message(item):
            converted.append(item)
            continue
        fields = item if isinstance(item, Mapping) else item.model_dump()
        as_dict = _langchain_dict_fields(fields)
        if as_dict is not None:
            fields = {**as_dict[1], "type": as_dict[0]}
        kind = str(fields.get("type"))
        refused = _LANGCHAIN_REFUSED.get(kind)
        if refused is not None:
            raise InvalidMessageError(
                f"messages[{position}]",
                f"a LangChain {refused}",
                _LANGCHAIN_REFUSED_WHY[refused.removesuffix("Chunk")],
            )
        role = fields["role"] if kind in _LANGCHAIN_CHAT else _LANGCHAIN_ROLES[kind]
        message: dict[str, Any] = {"role": role}
        content = fields.get("content")
        cache_control = _langchain_cache_control(fields, position)
        anthropic_turn = False
        if isinstance(content, list):
            field = f"messages[{position}].content"
            # a plain string is a text part (content is str | list[str | dict]), thinking's too
            blocks = [
                {"type": "text", "text": part} if isinstance(part, str) else _as_block(part)
                for part in content
            ]
            kinds = [part.get("type") if isinstance(part, Mapping) else None for part in blocks]
            if (
                (role == "user" and ("tool_result" in kinds or blocks == _FILLER_CONTENT))
                or (role == "assistant" and "tool_use" in kinds and not fields.get("tool_calls"))
                or (role == "system" and _marks_a_system_block(blocks))
            ):
                # an Anthropic turn as LangChain holds it (convert_to_messages of an Anthropic export):
                # read as Anthropic's, as convert_to_openai_messages reads it (its tool_use blocks are its
                # calls, its tool_result blocks tool messages), cache_control and thinking kept; its
                # name and reasoning as below, its invalid_tool_calls refused; the export's filler turn
                # too, left out where the export inserts one, and its system blocks (a breakpoint before
                # the last block ends a system message)
                anthropic_turn = True
                content = _with_langchain_cache_control(blocks, fields, position)
            else:
                if role == "assistant" and any(kind in _THINKING_BLOCK_TYPES for kind in kinds):
                    message["thinking"] = blocks
                parts = [
                    part
                    for part, kind in zip(blocks, kinds, strict=True)
                    if not (
                        role == "assistant"
                        and (kind in _LANGCHAIN_SKIPPED_PARTS or kind in _THINKING_BLOCK_TYPES)
                    )
                ]
                content = chat_completions_text(parts, field)
        message["content"] = content
        if fields.get("name") is not None:
            message["name"] = fields["name"]
        if role == "assistant":
            invalid = fields.get("invalid_tool_calls")
            if invalid:
                raise InvalidMessageError(
                    f"messages[{position}].invalid_tool_calls",
                    invalid,
                    "none: a call whose arguments are no JSON object cannot be held (answer the model "
                    "without it, or drop the message)",
                )
            if fields.get("tool_calls"):
                message["tool_calls"] = list(fields["tool_calls"])
            extra = fields.get("additional_kwargs")
            # langchain-deepseek's; an empty one too (DeepSeek wants the field back as it came)
            if isinstance(extra, Mapping) and isinstance(extra.get("reasoning_content"), str):
                message["reasoning_content"] = extra["reasoning_content"]
        elif role == "tool":
            message["tool_call_id"] = fields.get("tool_call_id")
            if fields.get("status") == "error":
                message["metadata"] = {"is_error": True}
        if cache_control is not None and not anthropic_turn:  # an Anthropic turn's is on its block
            message = _with_cache_control(message, cache_control)
        converted.append(message)
    return converted


def _marks_a_system_block(blocks: list[Any]) -> bool:
    """Whether system text blocks hold a ``cache_control`` before their last one.

    The Anthropic export's ``system`` of several messages: read as Anthropic's, where each breakpoint ends
    a system message.
    """
    return all(isinstance(block, Mapping) and block.get("type") == "text" for block in blocks) and any(
        block.get("cache_control") for block in blocks[:-1]
    )


def _with_langchain_cache_control(blocks: list[Any], fields: Mapping[str, Any], position: int) -> list[Any]:
    """The blocks of a LangChain message read as an Anthropic turn, with its breakpoint.

    Its ``additional_kwargs["cache_control"]`` goes on its last block (where langchain-anthropic sends it)
    unless that block holds one of its own.
    """
    extra = fields.get("additional_kwargs")
    last = blocks[-1] if blocks else None
    if not (isinstance(extra, Mapping) and extra.get("cache_control") and isinstance(last, Mapping)):
        return blocks
    if last.get("cache_control"):
        return blocks
    cache_control = _cache_control(extra, f"messages[{position}].additional_kwargs")
    return [*blocks[:-1], {**last, "cache_control": cache_control}]


def _langchain_cache_control(fields: Mapping[str, Any], position: int) -> dict[str, Any] | None:
    """The prompt-cache breakpoint of a LangChain message, as langchain-anthropic sends it (or ``None``).

    A ``cache_control`` on the content block that ends the message in the Anthropic export (its last
    block: a text block, or an ``AIMessage``'s ``tool_use`` when it made calls), else one in its
    ``additional_kwargs`` (langchain-anthropic puts that on the message's last block). An empty one is none.
    """
    content = fields.get("content")
    if isinstance(content, list) and content:
        last = _as_block(content[-1])
        if isinstance(last, Mapping) and last.get("cache_control"):
            calls = bool(fields.get("tool_calls"))
            kind = last.get("type")
            if (kind == "text" and not calls) or (kind == "tool_use" and calls):
                return _cache_control(last, f"messages[{position}].content[{len(content) - 1}]")
            return None  # on a block the window does not keep as such (a text before the calls): dropped
    extra = fields.get("additional_kwargs")
    if isinstance(extra, Mapping) and extra.get("cache_control"):
        return _cache_control(extra, f"messages[{position}].additional_kwargs")
    return None


_RESPONSES_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})
_RESPONSES_ITEMS = (
    "Responses API input or output items: role messages, 'message', 'function_call', "
    "'function_call_output' (string output) or 'reasoning' items (dicts or SDK objects)"
)


_RESPONSES_INPUT_PARTS = frozenset({"input_text", "output_text"})


def is_openai_responses_item(item: Any) -> bool:
    """Whether ``item`` is a Responses API item rather than a message dict of ``role`` only.

    A Responses API item has a ``type``, or is a role message of ``input_text`` / ``output_text`` parts.
    """
    if isinstance(item, Mapping):
        if "type" in item:
            return True
        content = item.get("content")
        return isinstance(content, list) and any(
            isinstance(part, Mapping) and part.get("type") in _RESPONSES_INPUT_PARTS for part in content
        )
    return callable(getattr(item, "model_dump", None))


def messages_from_openai_responses(items: Iterable[Any]) -> list[dict[str, Any]]:
    """Read OpenAI Responses API items as ``add_messages`` dicts (``role``, ``content``, ``tool_calls`` ...).

    Takes what :func:`to_openai_responses_input` makes and what a response's ``output`` holds, as dicts or
    the SDK's objects: role messages (``{"role", "content"}``), ``message`` items (their text parts joined;
    a refusal is the text), ``function_call`` items (the calls of the assistant message right before them,
    or of a new one), ``function_call_output`` items (tool messages answering their ``call_id``; an
    ``output`` of text parts is their text). A ``reasoning`` item is left out, wherever it is (the window
    does not keep it: pass ``previous_response_id`` or keep it yourself to send it back).

    Raises:
        InvalidArgumentError: an item of another type, or of another content (images, files).
    """
    return responses_items_read(items)[0]


def responses_items_read(
    items: Iterable[Any], origins: Sequence[int] | None = None
) -> tuple[list[dict[str, Any]], list[int]]:
    """:func:`messages_from_openai_responses`, and for each message the position of its item in ``items``.

    ``origins``: the position each item of ``items`` had in the caller's list (an earlier conversion
    changed it): errors and the positions returned name those.
    """
    converted: list[dict[str, Any]] = []
    sources: list[int] = []
    calls_to: dict[str, Any] | None = None  # the assistant message the next function_call items join
    for at, raw in enumerate(items):
        position = at if origins is None else origins[at]
        item = raw
        if not isinstance(item, Mapping) and callable(getattr(item, "model_dump", None)):
            item = item.model_dump(exclude_none=True)
        if not isinstance(item, Mapping):
            raise InvalidArgumentError(f"messages[{position}]", raw, _RESPONSES_ITEMS)
        kind = item.get("type")
        if kind == "function_call":
            if calls_to is None:
                calls_to = {"role": "assistant", "content": None, "tool_calls": []}
                converted.append(calls_to)
                sources.append(position)
            if not calls_to.get("tool_calls"):
                calls_to["tool_calls"] = []
            calls_to["tool_calls"].append(dict(item))
            continue
        if kind == "reasoning":  # anywhere in an output: the text and calls around it stay one message
            continue
        calls_to = None
        if kind == "function_call_output":
            output = item.get("output")
            if isinstance(output, list):  # content parts: their text (an image or a file is refused)
                output = _responses_text(output, position, "output")
            elif not isinstance(output, str):
                raise InvalidArgumentError(
                    f"messages[{position}].output", output, "a string or text parts (a tool's text)"
                )
            converted.append({"role": "tool", "content": output, "tool_call_id": item.get("call_id")})
            sources.append(position)
        elif kind == "message" or kind is None:
            if kind == "message":  # an item's id, status, phase ...: the API's, not the message's
                text = _responses_text(item.get("content"), position)
                message = {"role": item.get("role"), "content": text}
            else:
                message = dict(item)
                if isinstance(message.get("content"), list):  # {"role", "content": [input_text parts]}
                    message["content"] = _responses_text(message["content"], position)
            converted.append(message)
            sources.append(position)
            if message.get("role") == "assistant" and not message.get("tool_calls"):
                calls_to = message
        else:
            raise InvalidArgumentError(f"messages[{position}].type", kind, _RESPONSES_ITEMS)
    return converted, sources


def _responses_text(content: Any, position: int, field: str = "content") -> Any:
    """The text of a ``message`` item's content, or of a ``function_call_output``'s ``output``.

    A string as it is, or the text parts joined (a refusal's text).
    """
    if not isinstance(content, list):
        return content
    texts: list[str] = []
    for part in content:
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind in _RESPONSES_TEXT_PARTS and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
        else:
            raise InvalidArgumentError(
                f"messages[{position}].{field}", part, "text parts (input_text, output_text) or a refusal"
            )
    return joined_text(texts)


_ANTHROPIC_ONLY_BLOCKS = frozenset({"tool_use", "tool_result", "thinking", "redacted_thinking"})
_ANTHROPIC_BLOCKS = (
    "Anthropic content blocks the window holds: text, tool_use, thinking and redacted_thinking on an "
    "assistant turn, text and tool_result (of text) on a user turn; images, documents and server tool "
    "blocks are refused"
)


def _as_block(part: Any) -> Any:
    """A content block as a dict: an SDK object's dump (without its unset fields), a dict as it is."""
    if not isinstance(part, Mapping) and callable(getattr(part, "model_dump", None)):
        return part.model_dump(exclude_none=True)
    return part


def is_anthropic_message(item: Any) -> bool:
    """Whether ``item`` is an Anthropic Messages turn (or response) whose ``content`` needs reading.

    A dict with a ``content`` list holding a ``tool_use``, ``tool_result`` or thinking block (or, on a
    user or assistant turn or a system message, a text block with a ``cache_control`` and no part only
    Chat Completions has, ``image_url`` ...), or an SDK block object; or the SDK's
    response ``Message`` (``type == "message"``, its blocks objects), or its ``model_dump()`` (a
    ``message`` dict of Anthropic blocks, text too: a Responses API ``message`` item holds ``output_text``
    / ``input_text`` parts).
    """
    if type(item) is dict and type(item.get("content")) is str:  # the common case, quickly: text
        return False
    if isinstance(item, Mapping):
        if "type" in item:
            return item["type"] == "message" and _is_anthropic_response_dump(item)
        content = item.get("content")
    elif getattr(item, "type", None) == "message" and callable(getattr(item, "model_dump", None)):
        content = getattr(item, "content", None)
    else:
        return False
    if not isinstance(content, list):
        return False
    if content == _FILLER_CONTENT:  # the user turn the Anthropic export inserts: left out
        return True
    cache_marked = chat_completions = False
    for part in content:
        if isinstance(part, Mapping):
            kind = part.get("type")
            if kind in _ANTHROPIC_ONLY_BLOCKS:
                return True
            # a text block with a cache breakpoint: read as Anthropic's, which keeps it (a user or
            # assistant turn, or a request's system blocks given as a system message), unless a part only
            # Chat Completions has (image_url ...) says it is one of those (OpenRouter and LiteLLM take
            # cache_control on their text parts): refused or read as such, as before
            if kind == "text" and part.get("cache_control") and _turn_role(item) in _CACHED_ROLES:
                cache_marked = True
            chat_completions = chat_completions or kind in _CHAT_COMPLETIONS_ONLY_PARTS
        elif getattr(part, "type", None) in _ANTHROPIC_BLOCK_TYPES:  # an SDK block object (TextBlock ...)
            return True
    return cache_marked and not chat_completions


_ANTHROPIC_BLOCK_TYPES = frozenset({"text", *_ANTHROPIC_ONLY_BLOCKS})
_TURN_ROLES = frozenset({"user", "assistant"})
_CACHED_ROLES = frozenset({"system", "developer", *_TURN_ROLES})
"""Roles whose text blocks with a ``cache_control`` make a message Anthropic's: a turn's, or the
``system`` blocks of an Anthropic request given as a system message (or OpenAI's ``developer`` one)."""
_CHAT_COMPLETIONS_ONLY_PARTS = frozenset({"image_url", "input_audio", "file", "refusal"})


def _is_anthropic_response_dump(item: Mapping[str, Any]) -> bool:
    """Whether a ``type: "message"`` dict is an Anthropic response's ``model_dump()`` (not a Responses item).

    Its blocks are Anthropic's (``text`` alone, or ``tool_use`` / thinking among others: an image is then
    refused naming it), never a Responses API ``message`` item's ``output_text`` / ``input_text`` parts.
    """
    content = item.get("content")
    if not isinstance(content, list) or not content:
        return False
    kinds = [part.get("type") if isinstance(part, Mapping) else None for part in content]
    return any(kind in _ANTHROPIC_ONLY_BLOCKS for kind in kinds) or all(kind == "text" for kind in kinds)


_FILLER_CONTENT = [{"type": "text", "text": ANTHROPIC_CONTINUATION_TEXT}]


def messages_from_anthropic(items: Sequence[Any]) -> list[Any]:
    """Read the Anthropic turns of ``items`` as ``add_messages`` dicts; pass the other items through.

    An assistant turn (a dict ``{"role", "content": [blocks]}``, its blocks dicts or the SDK's objects, or
    the SDK's response ``Message``) is one assistant message: its text blocks are the text (joined by
    :func:`joined_text`: a line break between them, none between the pieces of a cited answer), its
    ``tool_use`` blocks the calls, its thinking blocks the thinking (interleaved with the calls: in place,
    see :attr:`Message.thinking`). A user turn's ``tool_result`` blocks are tool messages (the text of
    their content; ``is_error`` as ``metadata={"is_error": True}``, which the export sends back), then
    its text blocks one user message (joined so too: the export merges messages of one role in a row into
    one turn, which comes back as one message; exported again, it holds their texts as one text block).
    A user turn of :data:`ANTHROPIC_CONTINUATION_TEXT` alone is left out where the export inserts one (the
    first turn, before an assistant turn or alone; between two assistant turns that both hold thinking):
    elsewhere it is a user message, as it was before its export. A ``cache_control`` on the block that ends
    a message (a user turn's last text block, a ``tool_result``, an assistant turn's last ``tool_use``, or
    its last text when it made no call) is kept under
    :data:`~context_manager.core.messages.ANTHROPIC_CACHE_CONTROL_METADATA_KEY` in that message's metadata
    (the Anthropic export puts it back); one on another block is dropped. A system message whose content
    is an Anthropic request's ``system`` blocks (``{"role": "system", "content": body["system"]}``) with a
    ``cache_control`` on a block is read so too: a block with one ends a system message (the texts up to it
    joined, its breakpoint kept), the blocks after the last such block make one more. Other
    keys of a dict turn (``priority``, ``metadata`` ...) go to its message as ``add_message``'s options; a
    response's own fields (``id``, ``usage`` ...) are left out.

    Raises:
        InvalidMessageError: a block the window cannot hold (an image, a document, a server tool's
            blocks, thinking on a user turn).
    """
    return anthropic_items_read(items)[0]


def anthropic_items_read(items: Sequence[Any]) -> tuple[list[Any], list[int]]:
    """:func:`messages_from_anthropic`, and for each message the position of its item in ``items``."""
    converted: list[Any] = []
    sources: list[int] = []
    for position, item in enumerate(items):
        if not is_anthropic_message(item):
            converted.append(item)
            sources.append(position)
            continue
        if isinstance(item, Mapping) and "type" not in item:
            turn = dict(item)
        else:  # the SDK's response Message, or its dump: its turn, not the response's fields (id, usage ...)
            dumped = item if isinstance(item, Mapping) else item.model_dump(exclude_none=True)
            turn = {"role": dumped.get("role"), "content": dumped.get("content")}
        blocks = [_as_block(part) for part in turn.pop("content")]
        role = turn.pop("role", None)
        field = f"messages[{position}].content"
        if role == "user" and not turn and blocks == _FILLER_CONTENT and _filler_place(items, position):
            continue  # the export's filler, where the export inserts one: no message of the conversation
        if role == "assistant":
            converted.append(_anthropic_assistant(blocks, field, turn))
        elif role == "user":
            converted.extend(_anthropic_user(blocks, field, turn))
        elif role in _SYSTEM_ROLES:  # an Anthropic request's system blocks, given as a system message
            # (OpenAI's developer role is a system message: its marked text parts are read so too)
            converted.extend(_anthropic_system(blocks, field, turn))
        else:
            raise InvalidMessageError(
                f"messages[{position}].role", role, "'user' or 'assistant' (or 'system' of text blocks)"
            )
        sources.extend([position] * (len(converted) - len(sources)))
    return converted, sources


def _filler_place(items: Sequence[Any], position: int) -> bool:
    """Whether the Anthropic export inserts its user turn of filler where ``items[position]`` is.

    It inserts one as the first turn before an assistant turn (or as the only turn), and between two
    assistant turns that both hold thinking; elsewhere a user turn of that text is a message of the
    conversation. System messages before it (the export's ``system``, added back as messages) do not count.
    """
    after = _turn_role(items[position + 1]) if position + 1 < len(items) else None
    if all(_turn_role(item) in _SYSTEM_ROLES for item in items[:position]):
        return after is None or after == "assistant"
    before = items[position - 1]
    return (
        after == "assistant"
        and _turn_role(before) == "assistant"
        and _holds_thinking(before)
        and _holds_thinking(items[position + 1])
    )


_SYSTEM_ROLES = frozenset({"system", "developer"})


def _turn_role(item: Any) -> Any:
    """The ``role`` of an item of ``add_messages`` (a dict or an SDK object), else ``None``."""
    return item.get("role") if isinstance(item, Mapping) else getattr(item, "role", None)


def _holds_thinking(item: Any) -> bool:
    """Whether an Anthropic turn (a dict or an SDK object) holds a thinking block.

    Or an ``add_messages`` dict its ``thinking`` (a LangChain ``AIMessage`` read before: its thinking
    blocks are there, its content its text).
    """
    if isinstance(item, Mapping) and item.get("thinking"):
        return True
    content = item.get("content") if isinstance(item, Mapping) else getattr(item, "content", None)
    if not isinstance(content, list):
        return False
    return any(_block_type(part) in _THINKING_BLOCK_TYPES for part in content)


def _block_type(part: Any) -> Any:
    """The ``type`` of a content block, a dict or an SDK object."""
    return part.get("type") if isinstance(part, Mapping) else getattr(part, "type", None)


def _anthropic_assistant(blocks: list[Any], field: str, options: dict[str, Any]) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    thinking = cited = False
    for index, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
            cited = cited or bool(block.get("citations"))
        elif kind == "tool_use":
            calls.append(
                {
                    "type": "tool_use",
                    "id": block.get("id"),
                    "name": block.get("name"),
                    "input": block.get("input"),
                }
            )
        elif kind in _THINKING_BLOCK_TYPES:
            thinking = True
        else:
            raise InvalidMessageError(f"{field}[{index}]", block, _ANTHROPIC_BLOCKS)
    message: dict[str, Any] = {**options, "role": "assistant", "content": joined_text(texts, cited)}
    if calls:
        message["tool_calls"] = calls
    if thinking:
        message["thinking"] = blocks  # its thinking blocks, and the places of the calls between them
    # a cache breakpoint on the turn's last block: the export's last block of this message is the same
    # one (its last call; its text when it made none)
    last = blocks[-1] if blocks else None
    if isinstance(last, Mapping) and (
        last.get("type") == "tool_use" or (last.get("type") == "text" and not calls)
    ):
        cache_control = _cache_control(last, f"{field}[{len(blocks) - 1}]")
        if cache_control is not None:
            message = _with_cache_control(message, cache_control)
    return message


def _anthropic_system(blocks: list[Any], field: str, options: dict[str, Any]) -> list[dict[str, Any]]:
    """The system messages of an Anthropic request's ``system`` text blocks.

    A block with a ``cache_control`` ends a system message (the texts up to it joined, its breakpoint kept
    in the message's metadata), and the blocks after the last such block make one more: the export sends
    a text block per system message, so each breakpoint goes back on the block that ends the same text
    (one message, as given, when only the last block has one).
    """
    messages: list[dict[str, Any]] = []
    texts: list[str] = []
    for index, block in enumerate(blocks):
        if not (
            isinstance(block, Mapping) and block.get("type") == "text" and isinstance(block.get("text"), str)
        ):
            raise InvalidMessageError(f"{field}[{index}]", block, "text blocks (a system prompt's)")
        texts.append(block["text"])
        cache_control = _cache_control(block, f"{field}[{index}]")
        if cache_control is not None or index == len(blocks) - 1:
            message: dict[str, Any] = {**options, "role": "system", "content": joined_text(texts)}
            messages.append(message if cache_control is None else _with_cache_control(message, cache_control))
            texts = []
    return messages


def _cache_control(block: Mapping[str, Any], field: str) -> dict[str, Any] | None:
    """The ``cache_control`` of an imported block (``None`` when it has none), checked."""
    value = block.get("cache_control")
    if value is None:
        return None
    if not is_cache_control(value):
        raise InvalidMessageError(f"{field}.cache_control", value, CACHE_CONTROL_ALLOWED)
    copied: dict[str, Any] = json_copy(dict(value))
    return copied


def _with_cache_control(message: dict[str, Any], cache_control: dict[str, Any]) -> dict[str, Any]:
    """``message`` (an ``add_messages`` dict) keeping ``cache_control`` in its metadata."""
    metadata = message.get("metadata")
    if metadata is None or isinstance(metadata, Mapping):  # anything else: refused as it is
        message = {
            **message,
            "metadata": {**(metadata or {}), ANTHROPIC_CACHE_CONTROL_METADATA_KEY: cache_control},
        }
    return message


def _anthropic_user(blocks: list[Any], field: str, options: dict[str, Any]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    texts: list[str] = []
    cited = False
    text_cache: dict[str, Any] | None = None  # the last text block's cache_control: the message's block
    for index, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
            cited = cited or bool(block.get("citations"))
            text_cache = _cache_control(block, f"{field}[{index}]")
        elif kind == "tool_result":
            content = block.get("content", "")
            if isinstance(content, list):
                parts = [_as_block(part) for part in content]
                for at, part in enumerate(parts):
                    if not (isinstance(part, Mapping) and part.get("type") == "text"):
                        raise InvalidMessageError(f"{field}[{index}].content[{at}]", part, _ANTHROPIC_BLOCKS)
                content = chat_completions_text(parts, f"{field}[{index}].content")
            result: dict[str, Any] = {
                "role": "tool",
                "tool_call_id": block.get("tool_use_id"),
                "content": content,
            }
            if block.get("is_error") is True:
                result["metadata"] = {"is_error": True}
            cache_control = _cache_control(block, f"{field}[{index}]")
            if cache_control is not None:
                result = _with_cache_control(result, cache_control)
            messages.append(result)
        else:
            raise InvalidMessageError(f"{field}[{index}]", block, _ANTHROPIC_BLOCKS)
    if texts:
        said = {**options, "role": "user", "content": joined_text(texts, cited)}
        messages.append(said if text_cache is None else _with_cache_control(said, text_cache))
    elif options:  # a turn of results alone: its options go to each of them
        messages = [_with_options(message, options) for message in messages]
    return messages


def _with_options(message: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    merged = {**options, **message}
    if isinstance(options.get("metadata"), Mapping) and "metadata" in message:
        merged["metadata"] = {**options["metadata"], **message["metadata"]}
    return merged


def _is_error_result(message: Message) -> bool:
    flag = message.metadata.get("is_error")
    return flag is True


def _put_cache_control(
    blocks: list[dict[str, Any]], metadata: dict[str, Any], marked: list[dict[str, Any]]
) -> None:
    """Put a message's imported cache breakpoint back on its last block (and note it in ``marked``).

    Not on a message the window cut (its copy's text is not the block that was marked), nor on a thinking
    block (which takes none), nor one the API refuses (a conversation stored before they were refused).
    """
    kept = metadata[ANTHROPIC_CACHE_CONTROL_METADATA_KEY]
    if not is_cache_control(kept):  # stored before such ones were refused: the API would refuse the request
        return
    if blocks[-1]["type"] in _CACHEABLE_BLOCK_TYPES and _TRUNCATED_METADATA_KEY not in metadata:
        blocks[-1]["cache_control"] = json_copy(kept)
        marked.append(blocks[-1])


def _drop_refused_breakpoints(
    system_marked: list[dict[str, Any]],
    marked: list[dict[str, Any]],
    tool_breakpoints: int = 0,
    tool_ttl: int | None = None,
) -> None:
    """Take ``cache_control`` off the marked blocks (in request order) the API would refuse.

    It takes at most :data:`ANTHROPIC_MAX_CACHE_BREAKPOINTS` in a request (tools, system and messages
    together), and no breakpoint of a shorter ``ttl`` before one of a longer (a 5-minute one before a
    1-hour one): breakpoints imported by several requests, each valid alone, can break both. The tools'
    (``tool_breakpoints`` of them, the shortest ``ttl`` ``tool_ttl`` seconds: the caller's, first in the
    request) are kept; then the system prompt's (the prefix every request shares, the one a client caches
    first); then the turns' latest (the longest cached prefix) that fit: none of a ``ttl`` longer than a
    breakpoint kept before it.
    """
    room = ANTHROPIC_MAX_CACHE_BREAKPOINTS - tool_breakpoints
    kept, shortest = _keep_latest_breakpoints(system_marked, room, tool_ttl)
    _keep_latest_breakpoints(marked, room - kept, shortest)


def _keep_latest_breakpoints(
    marked: list[dict[str, Any]], room: int, ceiling: int | None
) -> tuple[int, int | None]:
    """Keep the latest ``room`` breakpoints of ``marked`` in ``ttl`` order, none longer than ``ceiling``.

    Returns how many were kept and the shortest known ``ttl`` (seconds) among them (``ceiling`` when none).
    """
    kept = 0
    longest = 0  # the longest ttl (seconds) of the breakpoints kept after this one
    shortest = ceiling
    for block in reversed(marked):
        ttl = _CACHE_TTL_SECONDS.get(block["cache_control"].get("ttl", "5m"))
        if kept == room or (ttl is not None and (ttl < longest or (ceiling is not None and ttl > ceiling))):
            del block["cache_control"]
            continue
        kept += 1
        if ttl is not None:
            longest = max(longest, ttl)
            shortest = ttl if shortest is None else min(shortest, ttl)
    return kept, shortest


_CACHE_TTL_SECONDS = {"5m": 300, "1h": 3600}
"""The ``ttl`` values of ``cache_control`` the API takes (absent: ``"5m"``), the only ones it holds."""
_CACHEABLE_BLOCK_TYPES = frozenset({"text", "tool_use", "tool_result"})
_TRUNCATED_METADATA_KEY = "context_manager.truncated"
""":data:`context_manager.core.compression.truncation.TRUNCATED_METADATA_KEY` (a cut copy's mark)."""
ANTHROPIC_MAX_CACHE_BREAKPOINTS = 4
"""The most ``cache_control`` blocks an Anthropic request takes (tools, system and messages together); an
export keeps this many: the system prompt's first, then the turns' latest."""


def _anthropic_blocks(message: Message, ids: dict[str, str], names: dict[str, str]) -> list[dict[str, Any]]:
    # Anthropic refuses a text block of whitespace only, and an assistant turn that ends the request with
    # trailing whitespace: such text is left out, an assistant's trailing whitespace dropped
    if message.role is Role.TOOL:
        call_id = message.tool_call_id
        assert call_id is not None  # a tool message always answers a call
        block: dict[str, Any] = {"type": "tool_result", "tool_use_id": ids.get(call_id, call_id)}
        if message.content.strip():
            block["content"] = message.content
        if _is_error_result(message):
            block["is_error"] = True
        return [block]
    # extended thinking: the turn's thinking blocks come first, as sent (the API checks their signatures)
    thinking = message.thinking
    blocks: list[dict[str, Any]] = []
    text_block: list[dict[str, Any]] = []
    if message.content.strip():
        text = message.content.rstrip() if message.role is Role.ASSISTANT else message.content
        text_block.append({"type": "text", "text": text})
    elif not message.tool_calls:
        return []  # nothing but thinking (the text blank, the calls pending): no turn of thinking alone
    calls = message.tool_calls
    if thinking and any(block["type"] == "tool_use" for block in thinking):
        # interleaved thinking: the calls made before a thinking block go back to their places (the API
        # refuses the blocks of a tool-use turn rearranged); the text goes before the first call
        by_id = {call.id: call for call in calls}
        placed: set[str] = set()
        for block in thinking:
            if block["type"] != "tool_use":
                blocks.append(dict(block))
                continue
            call = by_id.get(block["id"])
            if call is not None and call.id not in placed:  # a call left out (pending): no place
                if text_block:
                    blocks.append(text_block.pop())
                placed.add(call.id)
                blocks.append(_tool_use_block(call, ids, names))
        blocks.extend(text_block)
        calls = tuple(call for call in calls if call.id not in placed)
    else:
        blocks.extend(dict(block) for block in thinking)
        blocks.extend(text_block)
    blocks.extend(_tool_use_block(call, ids, names) for call in calls)
    return blocks


def _tool_use_block(call: ToolCall, ids: dict[str, str], names: dict[str, str]) -> dict[str, Any]:
    return {
        "type": "tool_use",
        "id": ids.get(call.id, call.id),
        "name": names.get(call.name, call.name),
        "input": json_copy(call.arguments),
    }


def to_anthropic_messages(
    messages: Iterable[Message], *, tools: Sequence[Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """Return an Anthropic Messages request body part: ``{"system": str, "messages": [...]}``.

    ``"system"`` is present only when there are system messages with text (joined by a blank line, in order;
    one of whitespace only is left out, the API refuses it); when one of them keeps an imported
    ``cache_control`` it is a list of text blocks instead, one per system message, the breakpoint on its
    message's block.
    Content is always a list of blocks, so merging a later message into the last turn only appends blocks.
    ``"messages"`` is never empty (the API needs one): with no other message it holds one user turn of
    :data:`ANTHROPIC_CONTINUATION_TEXT`, as it does before an assistant message that comes first. Text of
    whitespace only is left out and an assistant's trailing whitespace dropped (the API refuses both). A
    ``tool_use`` id or name the API refuses is exported made valid, the same id in its ``tool_result`` (see
    the module docstring). A message's ``name`` is left out: the API has none. A message's thinking
    blocks open its turn (interleaved with its calls: in the
    response's order); two assistant messages in a row that both hold thinking stay two turns, a user turn
    of :data:`ANTHROPIC_CONTINUATION_TEXT` between them (one turn would hold a run of thinking no response
    made, which the API refuses in a tool-use turn). A ``cache_control`` the import kept
    (:data:`~context_manager.core.messages.ANTHROPIC_CACHE_CONTROL_METADATA_KEY`) goes back on its
    message's last block, except on a message the window cut; at most
    :data:`ANTHROPIC_MAX_CACHE_BREAKPOINTS` (the API's limit, system and turns together): the system
    messages' first (the latest of them), then the turns' latest, so an append may take an earlier one
    away; and none of a 5-minute ``ttl`` before a 1-hour one (the API refuses that order: a turn's 1-hour
    breakpoint after a 5-minute one on the system prompt is left out).

    ``tools``: the request's tool definitions (:meth:`ToolRegistry.get_tool_schemas` ``("anthropic")``,
    maybe with a ``cache_control``), sent first as ``"tools"`` (copies): the API renders tools, then
    system, then messages, and counts the tools' breakpoints in the 4. They are kept as given; the system's
    and the turns' come after them in the room left, none of a longer ``ttl`` than the tools' shortest.

    Raises:
        InvalidArgumentError: ``tools`` is not a list of Anthropic tool definitions (dicts with a ``name`` of
            1 to 128 letters, digits, ``_`` or ``-``, each its own; an OpenAI ``{"type": "function",
            "function": ...}`` entry is refused), or their own breakpoints break the API's rules (more than
            4, a malformed ``cache_control``, a ``"1h"`` one after a ``"5m"`` one).
    """
    return anthropic_request(messages, tools=tools)[0]


def anthropic_request(
    messages: Iterable[Message], *, tools: Sequence[Mapping[str, Any]] | None = None
) -> tuple[dict[str, Any], int]:
    """:func:`to_anthropic_messages`, and how many user turns of :data:`ANTHROPIC_CONTINUATION_TEXT` it added.

    (The budget of :meth:`get_context` counts them: they are in the request the provider counts.)
    """
    fillers = 0
    tool_definitions, tool_breakpoints, tool_ttl = _anthropic_tools(tools)
    system_blocks: list[dict[str, Any]] = []  # a text block per system message
    system_marked: list[dict[str, Any]] = []  # those given back an imported cache_control
    turns: list[dict[str, Any]] = []
    marked: list[dict[str, Any]] = []  # the blocks of the turns given back an imported cache_control
    paired = paired_for_provider(messages)
    ids = _valid_names(call.id for message in paired for call in message.tool_calls)
    names = _valid_names((call.name for m in paired for call in m.tool_calls), _NAME_MAX_CHARS)
    repeated = _repeated_call_ids(paired)
    if repeated:
        valid_ids = ids
        exported_ids = {ids.get(call.id, call.id) for message in paired for call in message.tool_calls}
        used: set[str] = set()
    for message in paired:
        if message.role is Role.SYSTEM:
            if message.content.strip():
                system_blocks.append({"type": "text", "text": message.content})
                if message.metadata and ANTHROPIC_CACHE_CONTROL_METADATA_KEY in message.metadata:
                    _put_cache_control(system_blocks[-1:], message.metadata, system_marked)
            continue
        role = "assistant" if message.role is Role.ASSISTANT else "user"
        if repeated and message.tool_calls:
            # the API refuses a tool_use id seen earlier in the request: a later call of a repeated id gets
            # one of its own, which the results that follow (paired right after it) quote
            ids = dict(ids)
            for call in message.tool_calls:
                if call.id in repeated:
                    exported = _unused_id(valid_ids.get(call.id, call.id), used, exported_ids)
                    used.add(exported)
                    ids[call.id] = exported
        blocks = _anthropic_blocks(message, ids, names)
        if not blocks:
            continue
        if message.metadata and ANTHROPIC_CACHE_CONTROL_METADATA_KEY in message.metadata:
            _put_cache_control(blocks, message.metadata, marked)
        if not turns and role == "assistant":
            turns.append({"role": "user", "content": [{"type": "text", "text": ANTHROPIC_CONTINUATION_TEXT}]})
            fillers += 1
        if turns and turns[-1]["role"] == role and message.thinking and _has_thinking(turns[-1]["content"]):
            # two responses' thinking in one turn would be a run of thinking no response made (the API
            # takes each response's blocks unmodified): a user turn keeps them two assistant turns
            turns.append({"role": "user", "content": [{"type": "text", "text": ANTHROPIC_CONTINUATION_TEXT}]})
            fillers += 1
        if turns and turns[-1]["role"] == role:
            if message.thinking:  # an assistant turn must start with its thinking: before earlier text
                content = turns[-1]["content"]
                leading = 0
                while leading < len(blocks) and blocks[leading]["type"] in _THINKING_BLOCK_TYPES:
                    leading += 1
                content[0:0] = blocks[:leading]  # the turn holds no thinking yet (see above)
                content.extend(blocks[leading:])
            else:
                turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    _drop_refused_breakpoints(system_marked, marked, tool_breakpoints, tool_ttl)
    if not turns:  # the API needs one message: system messages alone (a new conversation) get a user turn
        turns.append({"role": "user", "content": [{"type": "text", "text": ANTHROPIC_CONTINUATION_TEXT}]})
        fillers += 1
    body: dict[str, Any] = {}
    if tool_definitions:
        body["tools"] = tool_definitions
    if system_marked:  # a breakpoint goes on a block: the system prompt as its messages' text blocks
        body["system"] = system_blocks
    elif system_blocks:
        body["system"] = "\n\n".join(block["text"] for block in system_blocks)
    body["messages"] = turns
    return body, fillers


_ANTHROPIC_TOOLS = (
    "a list of Anthropic tool definitions (dicts with a string 'name': get_tool_schemas('anthropic'))"
)


def _anthropic_tools(
    tools: Sequence[Mapping[str, Any]] | None,
) -> tuple[list[dict[str, Any]], int, int | None]:
    """Copies of the ``tools`` of an Anthropic request, checked, and their breakpoints.

    Returns the copies, how many hold a ``cache_control``, and their shortest known ``ttl`` in seconds
    (``None`` when none holds one).
    """
    if tools is None:
        return [], 0, None
    if isinstance(tools, str | bytes | Mapping) or not isinstance(tools, Sequence):
        raise InvalidArgumentError("tools", tools, _ANTHROPIC_TOOLS)
    copies: list[dict[str, Any]] = []
    names: dict[str, int] = {}  # a name: the position of its tool
    count, shortest = 0, None
    for index, tool in enumerate(tools):
        field = f"tools[{index}]"
        if not isinstance(tool, Mapping) or not isinstance(tool.get("name"), str) or "function" in tool:
            raise InvalidArgumentError(field, tool, _ANTHROPIC_TOOLS)
        if not _is_valid_name(tool["name"], _ANTHROPIC_TOOL_NAME_MAX_CHARS):  # the API refuses it (HTTP 400)
            raise InvalidArgumentError(
                f"{field}.name",
                tool["name"],
                f"1 to {_ANTHROPIC_TOOL_NAME_MAX_CHARS} letters, digits, '_' or '-' (the API's tools.N.name "
                "pattern ^[a-zA-Z0-9_-]{1,128}$)",
            )
        if tool["name"] in names:  # HTTP 400 "tools: Tool names must be unique."
            raise InvalidArgumentError(
                f"{field}.name",
                tool["name"],
                f"a name no other tool has (tools[{names[tool['name']]}] has it)",
            )
        names[tool["name"]] = index
        copies.append(json_copy(dict(tool)))
        cache_control = tool.get("cache_control")
        if cache_control is None:
            continue
        if not is_cache_control(cache_control):
            # an argument's: not the InvalidMessageError of an imported block
            raise InvalidArgumentError(f"{field}.cache_control", cache_control, CACHE_CONTROL_ALLOWED)
        count += 1
        ttl = _CACHE_TTL_SECONDS.get(cache_control.get("ttl", "5m"))
        if ttl is not None and shortest is not None and ttl > shortest:
            raise InvalidArgumentError(
                f"{field}.cache_control",
                cache_control,
                "no 'ttl' longer than an earlier tool's (the API refuses a breakpoint of a longer ttl after "
                "one of a shorter: a '1h' after a '5m' one)",
            )
        if ttl is not None:
            shortest = ttl
    if count > ANTHROPIC_MAX_CACHE_BREAKPOINTS:
        raise InvalidArgumentError(
            "tools",
            f"{count} with a cache_control",
            f"at most {ANTHROPIC_MAX_CACHE_BREAKPOINTS} (the API's limit for a request, tools, system and "
            "messages together; one on the last tool caches them all)",
        )
    return copies, count, shortest


def tool_definitions_tokens(tools: Sequence[Mapping[str, Any]], count: Callable[[str], int]) -> int:
    """Tokens a request's tool definitions take, as the budget of :meth:`get_context` counts them.

    Each definition's compact JSON (``ensure_ascii=False``: the text a provider renders into the prompt,
    its ``cache_control`` included, a few tokens over rather than under) counted with ``count`` (the
    window's tokenizer). The provider's own framing of tools (Anthropic's tool-use system prompt, a few
    hundred tokens) is not in it.
    """
    return sum(count(json.dumps(tool, ensure_ascii=False, separators=(",", ":"))) for tool in tools)


def _has_thinking(blocks: list[dict[str, Any]]) -> bool:
    return any(block["type"] in _THINKING_BLOCK_TYPES for block in blocks)


def _repeated_call_ids(messages: Sequence[Message]) -> set[str]:
    """Call ids made by more than one message (empty in the common case)."""
    seen: set[str] = set()
    repeated: set[str] = set()
    for message in messages:
        for call in message.tool_calls:
            if call.id in seen:
                repeated.add(call.id)
            seen.add(call.id)
    return repeated


def _unused_id(base: str, used: set[str], taken: set[str]) -> str:
    """``base`` the first time; then ``base``, ``_`` and a hash of the occurrence, clashing with no id."""
    if base not in used:
        return base
    number = 1
    while True:
        digest = hashlib.sha256(f"{base}#{number}".encode()).hexdigest()[:_HASH_DIGITS]
        candidate = f"{base}_{digest}"
        if candidate not in used and candidate not in taken:
            return candidate
        number += 1


@overload
def to_provider_format(
    messages: Sequence[Message], format: Literal["openai"], *, tools: None = None
) -> list[dict[str, Any]]: ...


@overload
def to_provider_format(
    messages: Sequence[Message],
    format: Literal["anthropic"],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]: ...


@overload
def to_provider_format(
    messages: Sequence[Message], format: Literal["openai_responses"], *, tools: None = None
) -> list[dict[str, Any]]: ...


@overload
def to_provider_format(
    messages: Sequence[Message], format: str, *, tools: Sequence[Mapping[str, Any]] | None = None
) -> list[dict[str, Any]] | dict[str, Any]: ...


def to_provider_format(
    messages: Sequence[Message], format: str, *, tools: Sequence[Mapping[str, Any]] | None = None
) -> list[dict[str, Any]] | dict[str, Any]:
    """Export ``messages`` as ``"openai"``, ``"anthropic"`` or ``"openai_responses"``.

    ``"openai"``: Chat Completions messages (a list); ``"anthropic"``: a dict with system and messages
    (and ``tools``, given: see :func:`to_anthropic_messages`); ``"openai_responses"``: the Responses API
    ``input`` items (a list).

    Raises:
        InvalidArgumentError: ``format`` is not one of the known formats, ``tools`` given with another
            format than ``"anthropic"``, or tools :func:`to_anthropic_messages` refuses.
    """
    if tools is not None and format != "anthropic":
        raise InvalidArgumentError("tools", tools, _TOOLS_FORMAT)
    if format == "openai":
        return to_openai_messages(messages)
    if format == "anthropic":
        return to_anthropic_messages(messages, tools=tools)
    if format == "openai_responses":
        return to_openai_responses_input(messages)
    raise InvalidArgumentError("format", format, FORMATS)


FORMATS = "'openai', 'anthropic' or 'openai_responses'"
"""The formats of :func:`to_provider_format`, as error messages say them."""
_TOOLS_FORMAT = (
    "None: tools only with format='anthropic', whose request counts their cache_control breakpoints (pass "
    "the OpenAI formats' tools to the API yourself)"
)


def parse_tool_calls(response: Any) -> list[ToolCall]:
    """Return the tool calls of a provider response.

    Accepts an OpenAI Chat Completions response (its first choice) or assistant message (dict with
    ``tool_calls``, or the SDK object) or its ``tool_calls`` list, an OpenAI Responses API response or its
    ``output`` items (``function_call`` items; the id is their ``call_id``, which results quote), an
    Anthropic response or message (dict or SDK object with ``content`` blocks), or a list of content
    blocks; LangChain's ``AIMessage`` and its ``tool_calls`` too.

    Raises:
        InvalidMessageError: a call has no id or name, or its arguments are not a JSON object (a
            LangChain ``AIMessage`` with ``invalid_tool_calls`` too); or the response is none of these
            shapes.
    """
    if response is None:
        return []
    if hasattr(response, "model_dump") and callable(response.model_dump):
        response = response.model_dump()
    if isinstance(response, dict):
        if response.get("invalid_tool_calls"):  # LangChain's calls whose arguments are no JSON
            raise InvalidMessageError(
                "response.invalid_tool_calls",
                response["invalid_tool_calls"],
                "none: a call whose arguments are no JSON object cannot be run (answer the model without "
                "it, or ask it again)",
            )
        if response.get("tool_calls"):
            return [ToolCall.from_value(_as_dict(item)) for item in response["tool_calls"]]
        choices = response.get("choices")
        if isinstance(choices, list):  # a whole Chat Completions response: its first choice's message
            message = _as_dict(choices[0]).get("message") if choices else None
            return parse_tool_calls(message)
        content = response.get("content")
        output = response.get("output")
        if isinstance(content, list):
            response = content
        elif isinstance(output, list):  # a Responses API response
            response = output
        elif _KNOWN_RESPONSE_KEYS.isdisjoint(response):
            raise InvalidMessageError("response", response, _RESPONSE_SHAPES)
        else:
            return []
    if isinstance(response, list | tuple):
        calls: list[ToolCall] = []
        for item in response:
            block = _as_dict(item)
            kind = block.get("type")
            if kind == "tool_use":
                calls.append(ToolCall.from_value(block))
            elif kind == "function_call":  # Responses API: results answer call_id (id is the item's)
                function = {"name": block.get("name", ""), "arguments": block.get("arguments", "{}")}
                calls.append(ToolCall.from_value({"id": block.get("call_id", ""), "function": function}))
            elif kind in _LISTED_CALL_TYPES or (kind is None and ("function" in block or "args" in block)):
                # a list of calls as given: a Chat Completions message's tool_calls, LangChain's
                calls.append(ToolCall.from_value(block))
            elif kind == "custom_tool_call":  # a call the model made: refused, not read as "no calls"
                ToolCall.from_value(block)
        return calls
    raise InvalidMessageError("response", response, _RESPONSE_SHAPES)


_LISTED_CALL_TYPES = frozenset({"function", "tool_call", "custom"})
"""Types of the items of a list of calls: Chat Completions ``tool_calls`` (a custom tool's call refused),
LangChain's ``AIMessage.tool_calls``."""
_KNOWN_RESPONSE_KEYS = frozenset({"role", "content", "tool_calls", "choices", "output", "type"})
_RESPONSE_SHAPES = (
    "an OpenAI response or assistant message, a Responses API response, or Anthropic content "
    "(dict, list or SDK object)"
)


def _as_dict(item: Any) -> dict[str, Any]:
    if isinstance(item, dict):
        return item
    if hasattr(item, "model_dump") and callable(item.model_dump):
        dumped = item.model_dump()
        if isinstance(dumped, dict):
            return dumped
    raise InvalidMessageError("tool_calls[]", item, "a dict or an SDK object with model_dump()")
