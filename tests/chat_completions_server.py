"""A local stand-in for an OpenAI-compatible Chat Completions endpoint (stdlib http.server in a thread).

It speaks enough of the protocol for the real ``openai`` client: ``POST /v1/chat/completions`` answers
a request whose last message is from the user with a tool call (the first offered tool whose name is in
``tool_arguments``), and any other request with a final text answer quoting the last tool result.
Every request is recorded (path, headers, JSON body) so tests can check what the client sent.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_TOOL_ARGUMENTS: dict[str, dict[str, Any]] = {
    "lookup_order": {"order_id": 1042},
    "my_tool": {"param1": "value1"},
    "get_weather": {"city": "Lisbon"},
}


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class ChatCompletionsServer:
    base_url: str
    requests: list[RecordedRequest] = field(default_factory=list)
    tool_arguments: dict[str, dict[str, Any]] = field(default_factory=lambda: dict(DEFAULT_TOOL_ARGUMENTS))

    def reply_to(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = body.get("messages") or []
        number = len(self.requests)
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
            text = (
                f"Final answer based on: {quoted[:80]}"
                if last.get("role") == "tool"
                else "Hello from the stub."
            )
            message = {"role": "assistant", "content": text}
            finish = "stop"
        return {
            "id": f"chatcmpl-stub-{number}",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": body.get("model", "stub-model"),
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }


@contextmanager
def running_server() -> Iterator[ChatCompletionsServer]:
    """Serve on 127.0.0.1 (a free port) for the duration of the block."""
    state: ChatCompletionsServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._send(404, {"error": {"message": f"unknown path {self.path}", "type": "not_found"}})
                return
            reply = state.reply_to(body)
            headers = {name.lower(): value for name, value in self.headers.items()}
            state.requests.append(RecordedRequest(self.path, headers, body))
            self._send(200, reply)

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state = ChatCompletionsServer(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1")
    thread = threading.Thread(target=server.serve_forever, name="chat-completions-stub", daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
