"""A local stand-in for OpenAI-compatible Chat Completions and the Anthropic Messages API (stdlib, a thread).

It speaks enough of both protocols for the real ``openai`` and ``anthropic`` clients:

* ``POST /v1/chat/completions`` answers a request whose last message is from the user with a tool call
  (the first offered tool whose name is in ``tool_arguments``), and any other request with a final text
  answer quoting the last tool result (or ``reply_text`` when set);
* ``POST /v1/messages`` answers a request offering tools whose last turn is the user's text with a
  ``tool_use`` block (the first offered tool whose name is in ``tool_arguments``), one whose last turn holds
  ``tool_result`` blocks with a text quoting the last result (or ``reply_text`` when set), and any other
  request with one text block (``reply_text``, or a fixed text).

Faults are scripted per request: ``server.faults.append(Fault(status=429, headers={"retry-after": "1"}))``
makes the next request fail that way; kinds are an HTTP status with the provider's error body, a malformed
body, an empty answer (no choices / no content), a hang (the reply comes after ``seconds``), a trickle (the
reply's bytes spread over ``seconds``), the normal answer streamed as server-sent events though the request
did not ask for a stream (``sse``) and an HTML page with status 200 (``html``, a proxy's login page). Every
request is recorded (path, headers, JSON body, whether a fault answered it) so tests can check what the
client sent.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

DEFAULT_TOOL_ARGUMENTS: dict[str, dict[str, Any]] = {
    "lookup_order": {"order_id": 1042},
    "my_tool": {"param1": "value1"},
    "get_weather": {"city": "Lisbon"},
}

USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
ANTHROPIC_USAGE = {"input_tokens": 12, "output_tokens": 6}


@dataclass
class Fault:
    """How the server answers one request instead of normally."""

    kind: Literal["status", "malformed", "empty", "hang", "trickle", "error_body", "sse", "html"] = "status"
    status: int = 500
    """For ``kind="status"``: the HTTP status."""
    headers: dict[str, str] = field(default_factory=dict)
    """Extra response headers (``retry-after`` ...)."""
    body: dict[str, Any] | None = None
    """For ``kind="status"``: the error body to send instead of the provider's usual one."""
    seconds: float = 5.0
    """For ``kind="hang"``: how long to wait before answering normally; for ``kind="trickle"``: how long
    the normal answer takes, sent a few bytes at a time after its headers (as a gateway sending keep-alive
    whitespace does)."""


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    fault: Fault | None = None


@dataclass
class ChatCompletionsServer:
    base_url: str
    """The OpenAI base URL (``http://127.0.0.1:PORT/v1``)."""
    anthropic_base_url: str = ""
    """The Anthropic base URL (``http://127.0.0.1:PORT``; the SDK appends ``/v1/messages``)."""
    requests: list[RecordedRequest] = field(default_factory=list)
    tool_arguments: dict[str, dict[str, Any]] = field(default_factory=lambda: dict(DEFAULT_TOOL_ARGUMENTS))
    faults: deque[Fault] = field(default_factory=deque)
    """Faults for the next requests, first in first out."""
    reply_text: str | None = None
    """The text of plain answers (both protocols) when set."""
    reply_usage: dict[str, Any] | None = None
    """The ``usage`` object of answers (both protocols) when set, as given (to send odd figures)."""
    omit_usage: bool = False
    """Answers (both protocols) without a ``usage`` object, as some compatible servers send them."""
    reply_model: str | None = None
    """The ``model`` of answers (both protocols) when set; else the model the request named."""
    reply_content: Any = None
    """The ``content`` of plain Chat Completions answers when set, as given (a list of content parts ...)."""
    reply_stop: str | None = None
    """The ``finish_reason`` (Chat Completions) or ``stop_reason`` (Messages) of plain answers when set."""
    reply_refusal: str | None = None
    """The ``refusal`` of plain Chat Completions answers' message when set."""
    stopping: threading.Event = field(default_factory=threading.Event)

    def reply_to(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = body.get("messages") or []
        number = len(self.requests) - 1  # this request is already recorded
        last = messages[-1] if messages else {"role": "user"}
        offered = [tool["function"]["name"] for tool in body.get("tools") or []]
        callable_tools = [name for name in offered if name in self.tool_arguments]
        if last.get("role") == "user" and callable_tools:
            name = callable_tools[0]
            message: dict[str, Any] = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": f"call_stub_{number}",
                        "type": "function",
                        "function": {"name": name, "arguments": json.dumps(self.tool_arguments[name])},
                    }
                ],
            }
            finish = "tool_calls"
        else:
            quoted = last.get("content") or ""
            if self.reply_text is not None:
                text = self.reply_text
            elif last.get("role") == "tool":
                text = f"Final answer based on: {quoted[:80]}"
            else:
                text = "Hello from the stub."
            message = {
                "role": "assistant",
                "content": text if self.reply_content is None else self.reply_content,
            }
            if self.reply_refusal is not None:
                message["refusal"] = self.reply_refusal
            finish = self.reply_stop or "stop"
        reply = {
            "id": f"chatcmpl-stub-{number}",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": self.reply_model or body.get("model", "stub-model"),
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": dict(USAGE) if self.reply_usage is None else self.reply_usage,
        }
        if self.omit_usage:
            del reply["usage"]
        return reply

    def anthropic_reply_to(self, body: dict[str, Any]) -> dict[str, Any]:
        number = len(self.requests) - 1  # this request is already recorded
        content: list[dict[str, Any]] = [
            {"type": "text", "text": self.reply_text or "Hello from the Anthropic stub."}
        ]
        stop = self.reply_stop or "end_turn"
        offered = [tool.get("name") for tool in body.get("tools") or []]
        callable_tools = [name for name in offered if name in self.tool_arguments]
        turns = body.get("messages") or []
        last = turns[-1] if turns else {}
        blocks = last.get("content") if isinstance(last.get("content"), list) else []
        results = [
            block for block in blocks if isinstance(block, dict) and block.get("type") == "tool_result"
        ]
        if callable_tools and last.get("role") == "user" and not results:
            name = callable_tools[0]
            arguments = self.tool_arguments[name]
            content = [{"type": "tool_use", "id": f"toolu_stub_{number}", "name": name, "input": arguments}]
            stop = "tool_use"
        elif callable_tools and results and self.reply_text is None:
            quoted = results[-1].get("content")
            text = quoted if isinstance(quoted, str) else json.dumps(quoted)
            content = [{"type": "text", "text": f"Final answer based on: {text[:80]}"}]
        reply = {
            "id": f"msg_stub_{number}",
            "type": "message",
            "role": "assistant",
            "model": self.reply_model or body.get("model", "stub-model"),
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": dict(ANTHROPIC_USAGE) if self.reply_usage is None else self.reply_usage,
        }
        if self.omit_usage:
            del reply["usage"]
        return reply

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [request for request in self.requests if request.path.endswith("/chat/completions")]


def _chat_completion_chunks(reply: dict[str, Any]) -> bytes:
    """A Chat Completions answer as the stream of ``chat.completion.chunk`` events that carries it."""
    choice = reply["choices"][0]
    base = {"id": reply["id"], "object": "chat.completion.chunk", "created": reply["created"]}
    chunks = [
        {
            **base,
            "model": reply["model"],
            "choices": [{"index": 0, "delta": choice["message"], "finish_reason": None}],
        },
        {
            **base,
            "model": reply["model"],
            "choices": [{"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}],
        },
    ]
    return "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks).encode() + b"data: [DONE]\n\n"


def _anthropic_events(reply: dict[str, Any]) -> bytes:
    """A Messages answer as the stream of events that carries it."""
    start = {**reply, "content": [], "stop_reason": None}
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": start})
    ]
    for index, block in enumerate(reply["content"]):
        events.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": {**block, "text": ""}},
            )
        )
        delta = {"type": "text_delta", "text": block["text"]}
        events.append(
            ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
        )
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    stop = {"stop_reason": reply["stop_reason"], "stop_sequence": None}
    events.append(("message_delta", {"type": "message_delta", "delta": stop, "usage": {"output_tokens": 6}}))
    events.append(("message_stop", {"type": "message_stop"}))
    return "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events).encode()


@contextmanager
def running_server() -> Iterator[ChatCompletionsServer]:
    """Serve on 127.0.0.1 (a free port) for the duration of the block."""
    state: ChatCompletionsServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            path = self.path.rstrip("/")
            anthropic = path == "/v1/messages"
            if path != "/v1/chat/completions" and not anthropic:
                self._send(404, {"error": {"message": f"unknown path {self.path}", "type": "not_found"}})
                return
            fault = state.faults.popleft() if state.faults else None
            headers = {name.lower(): value for name, value in self.headers.items()}
            state.requests.append(RecordedRequest(self.path, headers, body, fault))
            if fault is not None and fault.kind == "hang":
                if state.stopping.wait(fault.seconds):
                    return
                fault = None
            if fault is not None and fault.kind == "trickle":
                reply = state.anthropic_reply_to(body) if anthropic else state.reply_to(body)
                self._trickle(b" " * 20 + json.dumps(reply).encode(), fault.seconds)
                return
            if fault is None:
                self._send(200, state.anthropic_reply_to(body) if anthropic else state.reply_to(body))
            elif fault.kind == "status":
                if anthropic:
                    error = {"type": "error", "error": {"type": "api_error", "message": "scripted failure"}}
                else:
                    error = {"error": {"message": "scripted failure", "type": "server_error", "code": None}}
                self._send(fault.status, error if fault.body is None else fault.body, fault.headers)
            elif fault.kind == "sse":
                reply = state.anthropic_reply_to(body) if anthropic else state.reply_to(body)
                events = _anthropic_events(reply) if anthropic else _chat_completion_chunks(reply)
                self._send_bytes(200, events, {"Content-Type": "text/event-stream", **fault.headers})
            elif fault.kind == "html":
                page = b"<!doctype html><html><body>Sign in to continue</body></html>"
                self._send_bytes(200, page, {"Content-Type": "text/html; charset=utf-8", **fault.headers})
            elif fault.kind == "malformed":
                self._send_bytes(200, b'{"id": "broken", "choices": [', fault.headers)
            elif fault.kind == "error_body":  # an error sent with status 200 (as some gateways do)
                if anthropic:
                    error = {
                        "type": "error",
                        "error": {"type": "overloaded_error", "message": "upstream busy"},
                    }
                else:
                    error = {"error": {"message": "upstream busy", "code": 502}, "user_id": "u1"}
                self._send(200, error, fault.headers)
            else:  # empty
                reply = state.anthropic_reply_to(body) if anthropic else state.reply_to(body)
                reply["content" if anthropic else "choices"] = []
                self._send(200, reply, fault.headers)

        def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            self._send_bytes(status, json.dumps(payload).encode(), headers)

        def _send_bytes(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
            headers = dict(headers or {})
            try:
                self.send_response(status)
                self.send_header("Content-Type", headers.pop("Content-Type", "application/json"))
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                pass

        def _trickle(self, data: bytes, seconds: float) -> None:
            try:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                pieces = [data[start : start + 16] for start in range(0, len(data), 16)]
                for piece in pieces:
                    self.wfile.write(piece)
                    self.wfile.flush()
                    if state.stopping.wait(seconds / len(pieces)):
                        return
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    state = ChatCompletionsServer(
        base_url=f"http://127.0.0.1:{port}/v1", anthropic_base_url=f"http://127.0.0.1:{port}"
    )
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="chat-completions-stub", daemon=True
    )
    thread.start()
    try:
        yield state
    finally:
        state.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
