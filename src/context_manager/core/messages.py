"""Conversation value objects: :class:`Message`, :class:`ToolCall`, :class:`Role`, :class:`Priority`.

Roles and priorities accept the user guide's strings (``"user"``, ``"high"``) or the enums.

Messages and tool calls are immutable (frozen dataclasses, tool calls in a tuple): the context window keeps
a running token total over its messages, so a message changed after it was counted would make that total
wrong. To change one, build a new one (``dataclasses.replace``); to pin one in a window, use
``ContextWindow.pin``. Only nested JSON values (``metadata``, tool-call ``arguments``) are plain dicts and
lists; treat them as read-only.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from context_manager.core.errors import InvalidMessageError, InvalidPriorityError, InvalidRoleError
from context_manager.core.text import encodable

__all__ = [
    "ANTHROPIC_CACHE_CONTROL_METADATA_KEY",
    "REASONING_METADATA_KEY",
    "Message",
    "Priority",
    "Role",
    "ToolCall",
    "json_copy",
    "new_message_id",
]


class Role(StrEnum):
    """Who speaks a message."""

    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"

    @classmethod
    def parse(cls, value: Role | str) -> Role:
        """Return the role for ``value`` (an enum or its string, any case).

        ``"developer"`` (OpenAI's name of system instructions for its reasoning models) is ``SYSTEM``.

        Raises:
            InvalidRoleError: ``value`` is not a known role.
        """
        if isinstance(value, Role):
            return value
        if isinstance(value, str):
            found = _ROLES_BY_TEXT.get(value) or _ROLES_BY_TEXT.get(value.strip().lower())
            if found is not None:
                return found
        meant = _OTHER_ROLE_NAMES.get(value.strip().lower()) if isinstance(value, str) else None
        aliases = "'developer' is 'system'" + (f"; {value!r} is {meant!r} here" if meant else "")
        raise InvalidRoleError(
            "role", value, "one of " + ", ".join(repr(r.value) for r in cls) + f" ({aliases})"
        )


class Priority(StrEnum):
    """How much a message matters when the window must be compressed.

    ``LOW`` messages are evicted before ``NORMAL`` ones, then ``HIGH``; ``CRITICAL`` are never evicted.
    """

    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """Numeric order: low=0, normal=1, high=2, critical=3."""
        return _PRIORITY_RANK[self]

    @classmethod
    def parse(cls, value: Priority | str) -> Priority:
        """Return the priority for ``value`` (an enum or its string, any case).

        Raises:
            InvalidPriorityError: ``value`` is not a known priority.
        """
        if isinstance(value, Priority):
            return value
        if isinstance(value, str):
            found = _PRIORITIES_BY_TEXT.get(value) or _PRIORITIES_BY_TEXT.get(value.strip().lower())
            if found is not None:
                return found
        raise InvalidPriorityError("priority", value, "one of " + ", ".join(repr(p.value) for p in cls))


_PRIORITY_RANK = {Priority.LOW: 0, Priority.NORMAL: 1, Priority.HIGH: 2, Priority.CRITICAL: 3}
# Plain dict lookups: Enum(value) costs about a microsecond on the add_message hot path.
_ROLES_BY_TEXT: dict[str, Role] = {role.value: role for role in Role}
_ROLES_BY_TEXT["developer"] = Role.SYSTEM  # OpenAI's name of system instructions for its reasoning models
_OTHER_ROLE_NAMES = {"human": "user", "ai": "assistant", "model": "assistant", "function": "tool"}
"""Roles of other libraries (LangChain's message types, Gemini's ``model``, OpenAI's legacy ``function``):
the error that refuses one says which role to use."""
_PRIORITIES_BY_TEXT: dict[str, Priority] = {priority.value: priority for priority in Priority}


_ID_PREFIX = os.urandom(8).hex()
_id_counter = itertools.count(1)
_id_prefix_pid = os.getpid()


def _renew_id_prefix() -> None:
    """Give this process a new id prefix and counter (a forked child must not reuse its parent's ids)."""
    global _ID_PREFIX, _id_prefix_pid, _id_counter
    _ID_PREFIX, _id_prefix_pid, _id_counter = os.urandom(8).hex(), os.getpid(), itertools.count(1)


if hasattr(os, "register_at_fork"):  # POSIX: renewed in the child as it starts, not checked per id
    os.register_at_fork(after_in_child=_renew_id_prefix)
    _CHECK_PID_PER_ID = False
else:  # pragma: no cover - Windows has no fork
    _CHECK_PID_PER_ID = True


EARLIEST_TIMESTAMP = -62135596800.0
"""0001-01-01T00:00:00Z in seconds since the epoch: the earliest time a message or a memory can hold."""
LATEST_TIMESTAMP = 253402300799.0
"""9999-12-31T23:59:59Z in seconds since the epoch: the latest time a message or a memory can hold."""


DATABLE_TIMES = (
    f"seconds since the epoch, a number from {EARLIEST_TIMESTAMP:.0f} (year 1) "
    f"to {LATEST_TIMESTAMP:.0f} (year 9999)"
)
"""What a time of a message or a memory may be, as error messages say it."""


def is_datable(value: Any) -> bool:
    """Whether ``value`` is a time a date can be computed for: seconds since the epoch, years 1 to 9999."""
    return (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and EARLIEST_TIMESTAMP <= value <= LATEST_TIMESTAMP  # false for NaN too; a huge int compares exactly
    )


def check_timestamp(value: Any, field: str) -> float:
    """A message's time (:func:`is_datable`), as a float.

    Raises:
        InvalidMessageError: ``value`` is not such a number (NaN, a string, 1e20 ...).
    """
    if not is_datable(value):
        raise InvalidMessageError(field, value, DATABLE_TIMES)
    return float(value)


def new_message_id() -> str:
    """Return a new unique message id.

    A random per-process prefix plus a counter: unique across processes and restarts, and about ten times
    cheaper than ``uuid4`` on the ``add_message`` hot path. The prefix is renewed in a forked child.
    """
    if _CHECK_PID_PER_ID and os.getpid() != _id_prefix_pid:  # pragma: no cover - see above
        _renew_id_prefix()
    return f"msg_{_ID_PREFIX}{next(_id_counter):x}"


_MAX_INT_BITS = 13_000  # about 3,900 decimal digits, under Python's default int-to-str limit of 4,300


def json_copy(value: Any) -> Any:
    """A copy of a JSON value sharing no dict or list with it (scalars shared, tuples stay tuples).

    A call's arguments go to its tool and into exports as such copies: changing them never changes the call
    stored in a message.
    """
    if isinstance(value, dict):
        return {key: json_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_copy(item) for item in value]
    if isinstance(value, tuple):
        return tuple(json_copy(item) for item in value)
    return value


def _check_json(value: Any, field_name: str, path: str = "", depth: int = 0) -> None:
    """Reject values that cannot be stored and exported as JSON (cycles, NaN, non-str keys, objects)."""
    if depth > 64:
        raise InvalidMessageError(field_name, "<nested too deeply>", "JSON values nested at most 64 levels")
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, str):
        if not encodable(value):
            raise InvalidMessageError(f"{field_name}{path}", value, "valid Unicode text (no lone surrogates)")
        if "\x00" in value:  # as in content: memory and PostgreSQL cannot store it
            raise InvalidMessageError(f"{field_name}{path}", value, "text without NUL characters")
        return
    if isinstance(value, int):
        if value.bit_length() > _MAX_INT_BITS:  # json.dumps cannot write it (int-to-str digit limit)
            raise InvalidMessageError(f"{field_name}{path}", value, "integers of at most 4,000 digits")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidMessageError(f"{field_name}{path}", value, "finite numbers (JSON has no NaN/inf)")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or not encodable(key) or "\x00" in key:
                raise InvalidMessageError(
                    f"{field_name}{path}", key, "string keys of valid Unicode text without NUL characters"
                )
            _check_json(item, field_name, f"{path}.{key}", depth + 1)
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_json(item, field_name, f"{path}[{index}]", depth + 1)
        return
    raise InvalidMessageError(
        f"{field_name}{path}", value, "JSON values: str, int, float, bool, None, list, dict"
    )


_LABEL = "a non-empty string of valid Unicode without NUL characters"
"""What a name or a call id may be: it is remembered (a tool call as ``[tool call NAME] ARGUMENTS``) and
stored with the message, where NUL characters cannot go, as in content."""


def _is_label(value: object) -> bool:
    """A name or a call id: a non-empty ``str`` of valid Unicode without NUL (see :data:`_LABEL`)."""
    return isinstance(value, str) and value != "" and "\x00" not in value and encodable(value)


class _JsonSlot:
    """The slot of a call's arguments as JSON text, encoded once.

    The window's size check, its count and every export read it. Not a dataclass field: ``asdict``,
    ``fields``, ``repr``, ``==``, pickling and ``replace`` leave it out.
    """

    __slots__ = ("_json",)
    _json: str


@dataclass(slots=True, frozen=True)
class ToolCall(_JsonSlot):
    """A model's request to run a tool, as carried by an assistant message (immutable)."""

    id: str
    """The call id the tool result must quote in its ``tool_call_id``."""
    name: str
    """The tool to run."""
    arguments: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the tool (JSON values; read-only once the call is in a message)."""

    def __hash__(self) -> int:
        return hash(self.id)

    def arguments_json(self) -> str:
        """The arguments as the compact JSON string providers put on the wire.

        Encoded on first use and kept: the arguments are read-only once the call is in a message (the
        window counts a message once, too); a call given to a message is encoded again.
        """
        try:
            return self._json
        except AttributeError:
            text = json.dumps(self.arguments, ensure_ascii=False, separators=(",", ":"), sort_keys=False)
            _set_json(self, text)
            return text

    @classmethod
    def from_value(cls, value: ToolCall | dict[str, Any] | Any) -> ToolCall:
        """Build a call from a ``ToolCall``, an OpenAI ``tool_calls`` item or an Anthropic ``tool_use`` block.

        Dicts and the provider SDKs' objects (``ChatCompletionMessageToolCall``, ``ToolUseBlock``: pydantic
        models, read through ``model_dump()``) are taken. An OpenAI Responses API ``function_call`` item is
        read with its ``call_id`` as the id (the id its ``function_call_output`` answers). A dict with
        ``id``, ``name`` and ``arguments`` (or ``input``, or LangChain's ``args``) is read too.

        Raises:
            InvalidMessageError: the value has no id or name, or its arguments are not a JSON object.
        """
        if isinstance(value, ToolCall):
            call = value
            try:  # noqa: SIM105 (cheaper than contextlib.suppress) kept from before this message: maybe edited
                _forget_json(call)
            except AttributeError:  # none kept (or another thread forgot it at the same moment)
                pass
        elif isinstance(value, dict):
            call = cls._from_dict(value)
        elif callable(getattr(value, "model_dump", None)) and isinstance(dumped := value.model_dump(), dict):
            call = cls._from_dict(dumped)  # a provider SDK's object
        else:
            raise InvalidMessageError(
                "tool_calls[]", value, "ToolCall objects or dicts in OpenAI or Anthropic shape"
            )
        if not _is_label(call.id):
            raise InvalidMessageError("tool_calls[].id", call.id, _LABEL)
        if not _is_label(call.name):
            raise InvalidMessageError("tool_calls[].name", call.name, _LABEL)
        if not isinstance(call.arguments, dict):
            raise InvalidMessageError("tool_calls[].arguments", call.arguments, "a JSON object (dict)")
        _check_json(call.arguments, "tool_calls[].arguments")
        return call

    @classmethod
    def _from_dict(cls, value: dict[str, Any]) -> ToolCall:
        kind = value.get("type")
        if kind == "tool_use":  # Anthropic content block
            return cls(id=value.get("id", ""), name=value.get("name", ""), arguments=value.get("input") or {})
        function = value.get("function")
        if isinstance(function, dict):  # OpenAI Chat Completions tool call
            arguments = _json_arguments(function.get("arguments", "{}"), "tool_calls[].function.arguments")
            return cls(id=value.get("id", ""), name=function.get("name", ""), arguments=arguments)
        if kind in _FREE_FORM_CALL_TYPES:  # OpenAI custom tools: a free-form string input, no JSON object
            raise InvalidMessageError("tool_calls[].type", kind, _CALL_TYPES)
        if kind == "function_call":  # an OpenAI Responses API output item
            # answered under its call_id (the function_call_output's); its id ("fc_...") names the item
            call_id = value.get("call_id") or value.get("id", "")
            arguments = _json_arguments(value.get("arguments", "{}"), "tool_calls[].arguments")
            return cls(id=call_id, name=value.get("name", ""), arguments=arguments)
        # a ToolCall-shaped dict; LangChain's ``AIMessage.tool_calls`` items carry theirs as ``args``
        arguments = value.get("arguments", value.get("input", value.get("args")))
        return cls(id=value.get("id", ""), name=value.get("name", ""), arguments=arguments or {})


_set_json = _JsonSlot.__dict__["_json"].__set__  # the frozen dataclass refuses setattr; the slot takes it
_forget_json = _JsonSlot.__dict__["_json"].__delete__

_FREE_FORM_CALL_TYPES = frozenset({"custom", "custom_tool_call"})
_CALL_TYPES = (
    "function tool calls (OpenAI 'function' and Responses 'function_call', Anthropic 'tool_use'): a "
    "custom tool's call (free-form text input, no JSON arguments) has no place in the window, whose calls "
    "hold JSON arguments and export as function calls"
)


def _json_arguments(raw: Any, field: str) -> Any:
    """Call arguments sent as a JSON string (OpenAI's), parsed; anything else as it is.

    Raises:
        InvalidMessageError: the string is no JSON (or nests too deep, or holds a number too large).
    """
    if isinstance(raw, str):
        try:
            raw = json.loads(raw) if raw.strip() else {}
        except (ValueError, RecursionError) as error:  # bad JSON, huge numbers, JSON bombs
            raise InvalidMessageError(
                field,
                raw,
                "a JSON object string",
                detail=type(error).__name__ if isinstance(error, RecursionError) else str(error),
            ) from None
    return {} if raw is None else raw  # some servers send null (or "null") for a call without arguments


REASONING_METADATA_KEY = "context_manager.openai_reasoning"
"""The ``metadata`` key of the reasoning an OpenAI-compatible server sent with an assistant message.

A dict of the message's reasoning fields as the server sent them: ``reasoning_content`` (DeepSeek, vLLM),
``reasoning`` (vLLM, OpenRouter), ``reasoning_details`` (OpenRouter). ``add_message`` / ``add_messages``
keep them there (an assistant message's fields of that name, when not empty; ``reasoning_content`` also
when it is ``""``: DeepSeek's thinking mode wants the field back on a turn that called tools, even empty, and
an empty one is not an absent one); the OpenAI export writes
them back on the message, as DeepSeek's thinking mode requires after a tool call. Counted against the token
budget (the strings, ``reasoning_details`` as JSON). Named as the window's own keys are
(``context_manager.summary`` ...): a user's metadata keeps every other key free-form."""
REASONING_FIELDS = ("reasoning_content", "reasoning", "reasoning_details")
"""The reasoning fields of an OpenAI-compatible server's assistant message, in the order they are kept."""
_REASONING = (
    "on an assistant message, a dict of the reasoning an OpenAI-compatible server sent: 'reasoning_content' "
    "a string, 'reasoning' a non-empty string, 'reasoning_details' a non-empty list of JSON objects"
)


ANTHROPIC_CACHE_CONTROL_METADATA_KEY = "context_manager.anthropic_cache_control"
"""The ``metadata`` key of the ``cache_control`` an imported Anthropic content block carried.

Set by the Anthropic import (``add_messages`` of Anthropic turns) on the message whose last block carried
it: a user message's last text block, a ``tool_result`` block, an assistant turn's last block (its text,
or its last ``tool_use``), a block of an Anthropic request's ``system`` (the system message it ends); and by
the LangChain import (langchain-anthropic's ``cache_control``). The Anthropic export puts it back on that
message's last block, unless the window cut the message (its copy's text is not the block that was
marked); the other exports leave it out.
The value is the ``cache_control`` object as given (``{"type": "ephemeral"}``, maybe with a ``ttl``)."""
CACHE_CONTROL_ALLOWED = (
    "a JSON object {'type': 'ephemeral'} with an optional 'ttl' of '5m' or '1h' (Anthropic's cache_control: "
    "the API refuses another type, ttl or key)"
)
"""What a ``cache_control`` may be, as error messages say it."""
_CACHE_CONTROL_TTLS = frozenset({"5m", "1h"})


def is_cache_control(value: Any) -> bool:
    """Whether ``value`` is a ``cache_control`` the Anthropic API takes.

    That is ``{"type": "ephemeral"}``, maybe with a ``"ttl"`` of ``"5m"`` or ``"1h"``, nothing else.
    """
    return (
        isinstance(value, Mapping)
        and value.get("type") == "ephemeral"
        and all(key in ("type", "ttl") for key in value)
        and ("ttl" not in value or (isinstance(value["ttl"], str) and value["ttl"] in _CACHE_CONTROL_TTLS))
    )


def check_cache_control(value: Any) -> None:
    """Check a ``cache_control`` kept under :data:`ANTHROPIC_CACHE_CONTROL_METADATA_KEY`.

    Raises:
        InvalidMessageError: not one the API takes (:func:`is_cache_control`).
    """
    if not isinstance(value, dict) or not is_cache_control(value):
        raise InvalidMessageError(
            f"metadata.{ANTHROPIC_CACHE_CONTROL_METADATA_KEY}", value, CACHE_CONTROL_ALLOWED
        )


_REASONING_KEY_FIELD = f"metadata.{REASONING_METADATA_KEY}"
_REASONING_FIELD = {
    "reasoning_content": "a string (empty too): the reasoning an OpenAI-compatible server sent",
    "reasoning": "a non-empty string: the reasoning an OpenAI-compatible server sent",
    "reasoning_details": "a non-empty list of JSON objects: the reasoning details OpenRouter sent",
}


def check_reasoning(value: Any, role: Role, *, given_as_fields: bool = False) -> None:
    """Check the reasoning kept under :data:`REASONING_METADATA_KEY` (the export writes it as it is).

    ``given_as_fields``: the reasoning came as the message's own fields (``reasoning_content`` ...): an
    error names the field, not the metadata key.

    Raises:
        InvalidMessageError: not a non-empty dict of the reasoning fields with their types, or not on an
            assistant message.
    """
    if role is not Role.ASSISTANT:
        raise InvalidMessageError(_REASONING_KEY_FIELD, value, _REASONING, detail=f"role is {role}")
    if not isinstance(value, dict) or not value:
        raise InvalidMessageError(_REASONING_KEY_FIELD, value, _REASONING)
    for key, item in value.items():
        if key == "reasoning_content":  # "" too: DeepSeek wants the field back as it came, even empty
            valid = isinstance(item, str)
        elif key == "reasoning":
            valid = isinstance(item, str) and item != ""
        elif key == "reasoning_details":
            valid = isinstance(item, list) and bool(item) and all(isinstance(entry, dict) for entry in item)
        else:
            valid = False
        if not valid:
            field_name = key if given_as_fields else f"{_REASONING_KEY_FIELD}.{key}"
            raise InvalidMessageError(field_name, item, _REASONING_FIELD.get(key, _REASONING))


def reasoning_texts(message: Message) -> list[str]:
    """The texts of ``message``'s kept reasoning (:data:`REASONING_METADATA_KEY`), as they are counted.

    Its strings, and ``reasoning_details`` as compact JSON; none for a message without reasoning.
    """
    metadata = message.metadata
    reasoning = metadata.get(REASONING_METADATA_KEY) if metadata else None
    if type(reasoning) is not dict:
        return []
    texts: list[str] = []
    for item in reasoning.values():
        if isinstance(item, str):
            texts.append(item)
        elif item:
            texts.append(json.dumps(item, ensure_ascii=False, separators=(",", ":")))
    return texts


@dataclass(slots=True, frozen=True)
class Message:
    """One message of the conversation, with its exact token count cached (immutable).

    Build messages with :meth:`create` (it validates every field). The context window that accepts a
    message fills in ``token_count`` (a cache of the exact count); every other field is fixed at creation.
    Pinning a message in a window (``ContextWindow.pin``) replaces the window's copy with a pinned one.
    """

    role: Role
    """Who speaks: system, user, assistant or tool."""
    content: str
    """The text of the message (may be empty for an assistant message that only calls tools)."""
    priority: Priority = Priority.NORMAL
    """How much the message matters when the window is compressed."""
    pinned: bool = False
    """A pinned message is never evicted."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Free-form JSON metadata; kept with the message and with its memory after eviction.

    Some keys are the library's, among them ``is_error`` on a tool message (a failed tool, sent as such in the
    Anthropic export) and :data:`REASONING_METADATA_KEY` on an assistant message (a reasoning server's
    reasoning, written back by the OpenAI export)."""
    tool_calls: tuple[ToolCall, ...] = ()
    """Tool calls made by an assistant message, in the model's order."""
    tool_call_id: str | None = None
    """For a tool message: the id of the call it answers."""
    name: str | None = None
    """Optional participant or tool name."""
    id: str = field(default_factory=new_message_id)
    """Unique id of the message."""
    timestamp: float = field(default_factory=time.time)
    """Creation time, seconds since the epoch."""
    token_count: int = 0
    """Tokens this message costs in the prompt, chat-format overhead included (set by the window)."""
    thinking: tuple[dict[str, Any], ...] = ()
    """An assistant message's Anthropic ``thinking`` / ``redacted_thinking`` blocks, as the API sent them.

    Extended thinking with tool use: the API refuses the next request unless the assistant turn that made
    the calls starts with its thinking blocks, signatures unchanged. The Anthropic export puts them first
    in the message's turn; the OpenAI exports leave them out. They count against the token budget (the
    thinking text, or a redacted block's data) although the API drops earlier turns' ones: the safe side.
    Read-only dicts (``type`` and ``thinking`` + ``signature``, or ``data``). With interleaved thinking
    (thinking after a call in one response) a ``{"type": "tool_use", "id": <call id>}`` placeholder holds
    the place of each call made before a thinking block, so the export sends the blocks in the response's
    order (the API refuses them rearranged); it counts no tokens."""

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def is_protected(self) -> bool:
        """True for messages compression never evicts: system, pinned or critical."""
        return self.role is Role.SYSTEM or self.pinned or self.priority is Priority.CRITICAL

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (archives, memory); ``thinking`` only when there is some."""
        data = {
            "id": self.id,
            "role": self.role.value,
            "content": self.content,
            "priority": self.priority.value,
            "pinned": self.pinned,
            "metadata": dict(self.metadata),
            "tool_calls": [
                {"id": call.id, "name": call.name, "arguments": call.arguments} for call in self.tool_calls
            ],
            "tool_call_id": self.tool_call_id,
            "name": self.name,
            "timestamp": self.timestamp,
            "token_count": self.token_count,
        }
        if self.thinking:
            data["thinking"] = [dict(block) for block in self.thinking]
        return data

    @classmethod
    def create(
        cls,
        role: Role | str,
        content: Any,
        *,
        priority: Priority | str = Priority.NORMAL,
        pinned: bool = False,
        metadata: dict[str, Any] | None = None,
        tool_calls: Sequence[ToolCall | dict[str, Any]] | None = None,
        tool_call_id: str | None = None,
        name: str | None = None,
        thinking: Any = None,
    ) -> Message:
        """Validate every argument and build a message (token count not yet set).

        ``thinking`` (assistant only): Anthropic content blocks of the response, a list of dicts or SDK
        objects, or the response message itself (``response.content`` or ``response``): its ``thinking``
        and ``redacted_thinking`` blocks are kept as they are (see :attr:`thinking`); its ``text`` and
        ``tool_use`` blocks are skipped (the content and ``tool_calls`` carry them). Server tool blocks
        (``server_tool_use``, ``web_search_tool_result`` ...) are skipped only in a response that searched
        and answered: among thinking or tool calls, or with a server call still to run, they are refused.

        Raises:
            InvalidRoleError, InvalidPriorityError, InvalidMessageError: an argument is invalid.
        """
        # dict lookups first (a Role or Priority finds itself: a StrEnum hashes as its value), the full
        # parse (case, spaces, the error) only when they miss: about half a microsecond per message
        parsed_role = _ROLES_BY_TEXT.get(role) if type(role) is str or type(role) is Role else None
        if parsed_role is None:
            parsed_role = Role.parse(role)
        parsed_priority: Priority = priority if priority is Priority.NORMAL else Priority.parse(priority)
        if not isinstance(content, str):
            raise InvalidMessageError("content", content, "a str")
        if content.isascii():  # the common case: no copy, and the NUL search is a memchr
            if "\x00" in content:
                raise InvalidMessageError("content", content, "text without NUL characters")
        else:  # one UTF-8 copy finds both lone surrogates and (with a memchr over bytes) NUL characters
            try:
                has_nul = b"\x00" in content.encode("utf-8")
            except UnicodeEncodeError:
                has_nul = "\x00" in content  # the NUL error first, as for any other text
                if not has_nul:
                    raise InvalidMessageError(
                        "content", content, "valid unicode text (no lone surrogates)"
                    ) from None
            if has_nul:
                raise InvalidMessageError("content", content, "text without NUL characters")
        if not isinstance(pinned, bool):
            raise InvalidMessageError("pinned", pinned, "True or False")
        if metadata is None:
            metadata = {}
        elif not isinstance(metadata, dict):
            raise InvalidMessageError("metadata", metadata, "a dict of JSON values")
        elif metadata:
            _check_json(metadata, "metadata")
            if REASONING_METADATA_KEY in metadata:
                check_reasoning(metadata[REASONING_METADATA_KEY], parsed_role)
            if ANTHROPIC_CACHE_CONTROL_METADATA_KEY in metadata:
                check_cache_control(metadata[ANTHROPIC_CACHE_CONTROL_METADATA_KEY])
        if name is not None and not _is_label(name):
            raise InvalidMessageError("name", name, "None or " + _LABEL)
        calls: tuple[ToolCall, ...] = ()
        if tool_calls:
            if parsed_role is not Role.ASSISTANT:
                raise InvalidMessageError(
                    "tool_calls", tool_calls, "only on assistant messages", detail=f"role is {parsed_role}"
                )
            if not isinstance(tool_calls, list | tuple):
                raise InvalidMessageError("tool_calls", tool_calls, "a list of tool calls")
            calls = tuple([ToolCall.from_value(call) for call in tool_calls])
            ids = [call.id for call in calls]
            if len(set(ids)) != len(ids):
                raise InvalidMessageError("tool_calls", ids, "distinct call ids within one message")
        if parsed_role is Role.TOOL:
            if not _is_label(tool_call_id):
                raise InvalidMessageError(
                    "tool_call_id",
                    tool_call_id,
                    f"the id of an earlier assistant tool call (required for tool; {_LABEL})",
                )
        elif tool_call_id is not None:
            raise InvalidMessageError(
                "tool_call_id", tool_call_id, "None unless role is 'tool'", detail=f"role is {parsed_role}"
            )
        if not content and not calls and parsed_role is not Role.TOOL:
            if parsed_role is Role.ASSISTANT:
                raise InvalidMessageError(
                    "content",
                    content,
                    "non-empty text or tool_calls (a model reply with neither, cut by max_tokens or a "
                    "content filter, has nothing to keep: skip it, or ask again)",
                )
            raise InvalidMessageError("content", content, "non-empty text (or tool_calls on an assistant)")
        blocks: tuple[dict[str, Any], ...] = ()
        if thinking is not None:
            blocks = thinking_blocks(thinking)
            if blocks and parsed_role is not Role.ASSISTANT:
                raise InvalidMessageError(
                    "thinking", thinking, "only on assistant messages", detail=f"role is {parsed_role}"
                )
        message = _build(
            parsed_role,
            content,
            parsed_priority,
            pinned,
            dict(metadata) if metadata else {},
            calls,
            tool_call_id,
            name,
        )
        if blocks:
            _set_thinking(message, blocks)
        return message


_THINKING_TYPES = ("thinking", "redacted_thinking")
_THINKING = (
    "Anthropic content blocks (dicts or SDK objects) or a response message: thinking blocks with string "
    "'thinking' and a non-empty string 'signature', redacted_thinking blocks with a non-empty string 'data'"
)


def _is_server_block(kind: str) -> bool:
    """A server tool's block (``server_tool_use``, ``web_search_tool_result`` ...): the window holds none."""
    return kind.endswith(("_tool_use", "_tool_result"))


_SERVER_BLOCKS = (
    "no server tool block (server_tool_use, web_search_tool_result ...) the next request needs: the window "
    "does not hold them, and a response whose thinking or tool calls they sit among, or one with a server "
    "call still to run (a client call made with it, pause_turn), must go back as it came; keep that turn "
    "outside the window, or use server tools without extended thinking (a response that searched and "
    "answered, no thinking after the search, is taken: its search blocks are skipped)"
)


def thinking_blocks(value: Any) -> tuple[dict[str, Any], ...]:
    """The ``thinking`` / ``redacted_thinking`` blocks of Anthropic content, checked and copied.

    ``value``: a list of content blocks (dicts or SDK objects with ``model_dump()``), or a response
    message (dict or SDK object) with such a ``content`` list. Text and tool-use blocks are skipped, but
    for the places of the calls that come before a thinking block (interleaved thinking): a ``{"type":
    "tool_use", "id": ...}`` placeholder each, where the call was (see :attr:`Message.thinking`).

    Server tool blocks (``server_tool_use``, ``web_search_tool_result`` ...) are skipped too, unless the
    next request needs them: a thinking block after them (two runs of thinking would read as one), a
    ``tool_use`` block with thinking (a tool-use turn goes back as it came), or a server call without its
    result (it runs on the next request).

    Raises:
        InvalidMessageError: a block is of another type or lacks its signature / data, or server tool
            blocks the next request needs would be dropped.
    """
    if callable(getattr(value, "model_dump", None)):
        value = value.model_dump()
    if isinstance(value, dict) and isinstance(value.get("content"), list):
        value = value["content"]
    if not isinstance(value, list | tuple):
        raise InvalidMessageError("thinking", value, _THINKING)
    kept: list[dict[str, Any]] = []
    uses: list[str] = []  # ids of the tool_use blocks since the last thinking block
    server: int | None = None  # the position of the first server tool block
    server_calls: set[Any] = set()  # server calls without their result yet
    needed = False  # a block the next request checks is among the server blocks: they cannot be skipped
    for index, item in enumerate(value):
        block = item.model_dump() if callable(getattr(item, "model_dump", None)) else item
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "tool_use":  # its place, should thinking follow it (interleaved thinking)
            use_id = block.get("id")
            if isinstance(use_id, str) and use_id:
                uses.append(use_id)
            needed = True  # a tool-use turn: the API takes its blocks back as they came
            continue
        if isinstance(kind, str) and _is_server_block(kind):  # skipped unless the next request needs it
            if server is None:
                server = index
            if kind.endswith("_tool_use"):
                server_calls.add(block.get("id"))
            else:
                server_calls.discard(block.get("tool_use_id"))
            continue
        if server is not None and kind in _THINKING_TYPES:
            needed = True  # thinking after a search: without it, two runs of thinking would read as one
        if uses and kind in _THINKING_TYPES:
            kept.extend({"type": "tool_use", "id": use_id} for use_id in uses)
            uses = []
        if kind == "thinking":
            text, signature = block.get("thinking"), block.get("signature")
            if not isinstance(text, str) or not isinstance(signature, str) or not signature:
                raise InvalidMessageError(f"thinking[{index}]", item, _THINKING)
            copied = {"type": "thinking", "thinking": text, "signature": signature}
        elif kind == "redacted_thinking":
            data = block.get("data")
            if not isinstance(data, str) or not data:
                raise InvalidMessageError(f"thinking[{index}]", item, _THINKING)
            copied = {"type": "redacted_thinking", "data": data}
        elif kind == "text":
            continue
        else:
            raise InvalidMessageError(f"thinking[{index}]", item, _THINKING)
        _check_json(copied, f"thinking[{index}]")
        kept.append(copied)
    if server is not None and (server_calls or (needed and kept)):
        raise InvalidMessageError(f"thinking[{server}]", value[server], _SERVER_BLOCKS)
    return tuple(kept)


_CHAT_COMPLETIONS_PARTS = (
    "a string, or text parts ({'type': 'text', 'text': str}; a refusal part on an assistant message): "
    "the window keeps text, so images, audio and files are refused"
)


def chat_completions_text(content: Sequence[Any], field: str) -> str:
    """The text of a Chat Completions ``content`` given as content parts: the text parts joined.

    Chat Completions takes ``content`` as a string or a list of parts, text parts for every role (a
    refusal part on an assistant message): they are joined by a line break (:func:`joined_text`), as the
    Responses API import joins its parts.

    Raises:
        InvalidMessageError: a part is not a text or refusal part with its string (an image, audio or a
            file: the window keeps text only).
    """
    texts: list[str] = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
        else:
            raise InvalidMessageError(f"{field}[{index}]", part, _CHAT_COMPLETIONS_PARTS)
    return joined_text(texts, any(isinstance(part, Mapping) and part.get("citations") for part in content))


def joined_text(texts: list[str], pieces: bool = False) -> str:
    """The text of one message given as several text parts or blocks: joined by a line break.

    Parts are separate texts (a document and its question, or two messages an Anthropic export merged
    into one turn): a line break between them, as OpenAI-compatible servers (vLLM) read such a message
    and LangChain's and LlamaIndex's conversions join them ("Revenue grew 4%." and "Summarise it." read
    "Revenue grew 4%.Summarise it." joined as they were). ``pieces``: the blocks of an Anthropic answer
    with citations, one text cut around its cited passages: joined as they are.
    """
    return ("" if pieces else "\n").join(texts)


def create_plain(role: Role | str, content: Any, *, check_unicode: bool) -> Message:
    """``Message.create(role, content)`` with no other argument: the fast path of ``add_message``.

    With no options there is nothing to check but the role and the content, so this skips the option
    checks. A ``content`` of Chat Completions text parts is their text (:func:`chat_completions_text`), as
    with options. ``check_unicode=False`` also leaves the lone-surrogate check of a non-ASCII text to the
    caller: ``add_message`` with the built-in counter, whose count of the text fails on one
    (``UnicodeEncodeError``) before the window changes, so the text is not converted to UTF-8 twice.

    Raises:
        InvalidRoleError, InvalidMessageError: as :meth:`Message.create`.
    """
    parsed_role = _ROLES_BY_TEXT.get(role) if type(role) is str or type(role) is Role else None
    if parsed_role is None or parsed_role is Role.TOOL or type(content) is not str or not content:
        if isinstance(content, list | tuple):  # Chat Completions content parts: their text
            content = chat_completions_text(content, "content")
        return Message.create(role, content)  # the errors (a tool message needs its call's id), as usual
    if "\x00" in content:
        raise InvalidMessageError("content", content, "text without NUL characters")
    if check_unicode and not content.isascii() and not encodable(content):
        raise InvalidMessageError("content", content, "valid unicode text (no lone surrogates)")
    return _build(parsed_role, content, Priority.NORMAL, False, {}, (), None, None)


# Message.create's constructor: the checks are done, so the fields are set through the slots' descriptors
# (no keyword parsing, no frozen __setattr__ detour): about half the cost of Message(...) on the
# add_message hot path.
_new_object = object.__new__
(
    _set_role,
    _set_content,
    _set_priority,
    _set_pinned,
    _set_metadata,
    _set_tool_calls,
    _set_tool_call_id,
    _set_name,
    _set_id,
    _set_timestamp,
    _set_token_count,
) = (
    Message.__dict__[field_name].__set__
    for field_name in (
        "role",
        "content",
        "priority",
        "pinned",
        "metadata",
        "tool_calls",
        "tool_call_id",
        "name",
        "id",
        "timestamp",
        "token_count",
    )
)
_set_thinking = Message.__dict__["thinking"].__set__
_now = time.time


def _build(
    role: Role,
    content: str,
    priority: Priority,
    pinned: bool,
    metadata: dict[str, Any],
    tool_calls: tuple[ToolCall, ...],
    tool_call_id: str | None,
    name: str | None,
) -> Message:
    """A new message from checked values (a new id, the current time, no token count yet)."""
    message: Message = _new_object(Message)
    _set_role(message, role)
    _set_content(message, content)
    _set_priority(message, priority)
    _set_pinned(message, pinned)
    _set_metadata(message, metadata)
    _set_tool_calls(message, tool_calls)
    _set_tool_call_id(message, tool_call_id)
    _set_name(message, name)
    _set_id(message, new_message_id())
    _set_timestamp(message, _now())
    _set_token_count(message, 0)
    _set_thinking(message, ())
    return message
