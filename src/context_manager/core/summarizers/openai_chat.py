"""A summarizer for any OpenAI-compatible Chat Completions endpoint (``pip install '...[openai]'``).

Works with OpenAI itself and with servers that speak the same protocol (vLLM, Ollama, llama.cpp's server,
LM Studio, LiteLLM ...): point ``base_url`` at them. The official ``openai`` SDK is imported when the
summarizer is created, not before.

Example:
    >>> summarizer = OpenAISummarizer("gpt-4o-mini")  # OPENAI_API_KEY from the environment
    >>> local = OpenAISummarizer("llama3.1", base_url="http://127.0.0.1:11434/v1")
    >>> manager = EnhancedContextManager(config, summarizer=summarizer)
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import urlsplit

from context_manager.core.errors import ConfigurationError, InvalidArgumentError, MissingDependencyError
from context_manager.core.summarizers.llm import (
    EmptyAnswer,
    LLMSummarizer,
    RequestFailure,
    SummaryUsage,
    answer_byte_limit,
    check_client,
    check_extra_parameters,
    classify_sdk_error,
    read_answer,
    resolve_base_url,
    server_error_note,
    url_without_credentials,
    usage_count,
)
from context_manager.core.summarizers.prompt import SummaryPrompt

if TYPE_CHECKING:
    from openai import AsyncOpenAI

__all__ = ["OpenAISummarizer"]

LimitField = Literal["max_tokens", "max_completion_tokens"]

_OPENAI_HOST = "api.openai.com"
_OPENAI_URL = "https://api.openai.com/v1"
_AZURE_OPENAI_HOSTS = (".openai.azure.com", ".cognitiveservices.azure.com")
_RESERVED = ("model", "messages", "max_tokens", "max_completion_tokens")
"""Request fields the adapter sets (``extra_parameters`` may not)."""


class OpenAISummarizer(LLMSummarizer):
    """Summaries from a Chat Completions model (see :class:`LLMSummarizer` for retries and the prompt).

    Args:
        model: The model name (``"gpt-4o-mini"``, or the name a local server knows).
        client: An ``openai.AsyncOpenAI`` to use (its own retries are turned off for these requests; it is
            not closed by :meth:`aclose`). Created from ``base_url`` and ``api_key`` when omitted.
        base_url: The endpoint, e.g. ``"http://127.0.0.1:8000/v1"`` (default: ``OPENAI_BASE_URL``, unless
            empty, or OpenAI's).
        api_key: The key (default: ``OPENAI_API_KEY``; a placeholder when the endpoint, ``base_url`` or
            ``OPENAI_BASE_URL``, is neither OpenAI's nor Azure OpenAI's and no key is set, since local
            servers rarely check one).
        limit_field: Which request field carries the output limit: ``"max_completion_tokens"`` (what
            OpenAI's current models expect) or ``"max_tokens"`` (what most compatible servers read). By
            default the first for OpenAI's own endpoint and Azure OpenAI's, the second for any other
            ``base_url``.
        extra_parameters: More request fields (``{"temperature": 0}``, ``{"extra_body": {...}}``); not the
            ones the adapter sets (``model``, ``messages``, the output limit, ``timeout``, ``stream``).
        **options: The shared options of :class:`LLMSummarizer` (``timeout``, ``max_retries``,
            ``total_timeout``, ``max_input_tokens``, ``instructions``, ``counter``, ``backoff``,
            ``max_backoff``, ``max_retry_wait``).

    Raises:
        MissingDependencyError: the ``openai`` package is not installed.
        ConfigurationError: no API key for OpenAI's own endpoint or Azure OpenAI's.
        InvalidArgumentError: an argument is out of range (a synchronous ``client``, a ``base_url`` that is
            no http(s) URL, an ``extra_parameters`` field the adapter sets).
    """

    provider: ClassVar[str] = "openai"

    def __init__(
        self,
        model: str,
        *,
        client: AsyncOpenAI | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        limit_field: LimitField | None = None,
        extra_parameters: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(model, **options)
        try:
            import openai
        except ImportError:
            raise MissingDependencyError("OpenAISummarizer", "openai", "openai") from None
        if limit_field not in (None, "max_tokens", "max_completion_tokens"):
            raise InvalidArgumentError(
                "limit_field", limit_field, "'max_tokens', 'max_completion_tokens' or None"
            )
        check_client(client, openai, "openai.AsyncOpenAI")
        extra = check_extra_parameters(extra_parameters, _RESERVED)
        self._sdk: Any = openai
        from openai.types.chat import ChatCompletion

        self._answer_type: Any = ChatCompletion
        owns_client = client is None
        if client is None:
            import os

            endpoint = resolve_base_url(base_url, "OPENAI_BASE_URL", _OPENAI_URL)
            # OpenAI's API and Azure OpenAI check the key: the SDK says it is missing, here and not at every
            # compression with a 401
            local = not _serves_openai_models(urlsplit(endpoint).hostname or "")
            if api_key is None and local and not os.environ.get("OPENAI_API_KEY"):
                api_key = "unused"  # the SDK insists on a key; local servers do not check it
            try:
                client = openai.AsyncOpenAI(
                    base_url=endpoint, api_key=api_key, max_retries=0, timeout=self.timeout
                )
            except openai.OpenAIError as error:
                raise ConfigurationError(
                    "summarizer",
                    f"openai:{model}",
                    "an API key: set OPENAI_API_KEY, pass api_key=, or set base_url for a local server",
                    detail=str(error),
                ) from None
        self.client: AsyncOpenAI = client.with_options(max_retries=0)
        """The client requests go through (retries are ours, not the SDK's)."""
        if owns_client:
            self._client_to_close = client
        if limit_field is None:
            host = urlsplit(str(self.client.base_url)).hostname or ""
            limit_field = "max_completion_tokens" if _serves_openai_models(host) else "max_tokens"
        self.limit_field: LimitField = limit_field
        """The request field carrying the output limit."""
        self.extra_parameters: dict[str, Any] = extra
        """More request fields sent with every request."""

    @property
    def endpoint(self) -> str:
        """The client's base URL, with any ``user:token@`` in it shown as ``***@`` (requests use it whole)."""
        return url_without_credentials(str(self.client.base_url))

    async def _request(self, prompt: SummaryPrompt, request_timeout: float) -> tuple[str, SummaryUsage]:
        parameters: dict[str, Any] = {
            **self.extra_parameters,
            "model": self.model,
            "messages": [
                {"role": "system", "content": prompt.instructions},
                {"role": "user", "content": prompt.transcript},
            ],
            self.limit_field: prompt.max_output_tokens,
            "timeout": request_timeout,
        }
        # streamed: a server ignoring the output limit sent 22 MB, which the SDK parsed on the event loop
        async with self.client.chat.completions.with_streaming_response.create(**parameters) as raw:
            response = await read_answer(raw, self._answer_type, answer_byte_limit(prompt.max_output_tokens))
        usage = response.usage
        summary_usage = SummaryUsage(
            input_tokens=usage_count(getattr(usage, "prompt_tokens", None)),
            output_tokens=usage_count(getattr(usage, "completion_tokens", None)),
            model=response.model if isinstance(response.model, str) and response.model else self.model,
            provider=self.provider,
        )
        choices = response.choices or []
        if not choices:
            raise EmptyAnswer(f"the response has no choices{server_error_note(response)}", summary_usage)
        message = choices[0].message
        content = getattr(message, "content", None) if message is not None else None
        if isinstance(content, list):  # content parts (Mistral's reasoning models, some gateways)
            content = "".join(_part_text(part) for part in content)
        reason = getattr(choices[0], "finish_reason", None)
        if reason == "content_filter":
            # the text before the filter stopped it: a summary cut short, not one of the evicted turns
            stopped = "the answer was stopped by a content filter (finish_reason 'content_filter')"
            raise EmptyAnswer(stopped, summary_usage)
        if isinstance(content, str):
            content = _without_reasoning(content)
            if content is None:
                cut = f"the answer holds only the model's reasoning, unfinished (finish_reason {reason!r})"
                raise EmptyAnswer(cut, summary_usage)
        if not isinstance(content, str) or not content.strip():
            refusal = getattr(message, "refusal", None) if message is not None else None
            why = f"; refusal: {refusal[:200]!r}" if isinstance(refusal, str) and refusal else ""
            raise EmptyAnswer(f"the first choice has no text (finish_reason {reason!r}{why})", summary_usage)
        if reason == "length":
            summary_usage = dataclasses.replace(summary_usage, cut_at_limit=True)
        return content, summary_usage

    def _client_closed(self) -> bool:
        return bool(self.client.is_closed())

    def _classify(self, error: Exception) -> RequestFailure:
        failure = classify_sdk_error(error, self._sdk)
        url = urlsplit(str(self.client.base_url))
        if (
            failure.status_code == 404
            and not url.path.rstrip("/").endswith("/v1")
            and not _serves_openai_models(url.hostname or "")
        ):
            # Ollama's http://127.0.0.1:11434 for http://127.0.0.1:11434/v1: the most common slip
            return dataclasses.replace(
                failure,
                description=f"{failure.description} (an OpenAI-compatible base_url usually ends in /v1)",
            )
        return failure


def _serves_openai_models(host: str) -> bool:
    """Whether ``host`` serves OpenAI's models (OpenAI's API, an Azure OpenAI resource).

    Their reasoning models refuse ``max_tokens``; any other host is a compatible server, which reads it.
    """
    host = host.lower()
    return host == _OPENAI_HOST or host.endswith(_AZURE_OPENAI_HOSTS)


_THINK_OPEN = re.compile(r"\s*<think>")
_THINK_CLOSE = "</think>"
_OWN_LINE_END = re.compile(r"[ \t]*(?:\r?\n|$)")
_THINK_CLOSE_AT_LINE_END = re.compile(r"</think>[ \t]*(?:\r?\n|$)")
_THINK_CLOSE_ON_OWN_LINE = re.compile(r"(?:^|\n)[ \t]*</think>[ \t]*(?:\r?\n|$)")


def _without_reasoning(content: str) -> str | None:
    """``content`` without the reasoning a local server left in it; ``None`` if it holds nothing else.

    A reasoning model served without a reasoning parser (vLLM, llama.cpp's server, Ollama's older releases)
    answers ``<think>...</think>`` then its answer, or, when the chat template opened the ``<think>``
    itself (DeepSeek-R1 and its distillations), its thinking then ``</think>`` and its answer. An opening
    tag without its end is an answer cut inside its thinking (the output limit): no summary at all.

    The tags are taken for reasoning only where a model writes them: ``<think>`` first, ``</think>``
    ending its line (on a line of its own when no ``<think>`` opened it). A summary of a conversation about
    reasoning models or markup that names them (``splits the output at </think>``, ``<think> tags wrap
    the reasoning``) is kept whole: cutting at the first ``</think>`` lost everything before it.
    """
    opening = _THINK_OPEN.match(content)
    if opening is not None:
        thinking = content[opening.end() :]
        closing = _THINK_CLOSE_AT_LINE_END.search(thinking)
        if closing is not None:
            return thinking[closing.end() :]
        if _OWN_LINE_END.match(thinking) is None:  # "<think> tags ...": words about the tag
            return content
        _, closed, answer = thinking.partition(_THINK_CLOSE)
        return answer if closed else None
    closing = _THINK_CLOSE_ON_OWN_LINE.search(content)
    if closing is not None and "<think>" not in content[: closing.start()]:
        return content[closing.end() :]
    return content


def _part_text(part: Any) -> str:
    """The text of a ``{"type": "text", "text": ...}`` content part; ``""`` for any other part."""
    if isinstance(part, Mapping):
        kind, text = part.get("type"), part.get("text")
    else:
        kind, text = getattr(part, "type", None), getattr(part, "text", None)
    return text if kind == "text" and isinstance(text, str) else ""
