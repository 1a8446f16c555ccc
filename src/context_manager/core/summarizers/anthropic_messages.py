"""A summarizer for the Anthropic Messages API (``pip install 'python-context-manager[anthropic]'``).

The official ``anthropic`` SDK is imported when the summarizer is created, not before.

Example:
    >>> summarizer = AnthropicSummarizer("claude-haiku-4-5")      # ANTHROPIC_API_KEY from the environment
    >>> manager = EnhancedContextManager(config, summarizer=summarizer)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

from context_manager.core.errors import ConfigurationError, MissingDependencyError
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
    from anthropic import AsyncAnthropic

__all__ = ["AnthropicSummarizer"]

_ANTHROPIC_URL = "https://api.anthropic.com"
_RESERVED = ("model", "system", "messages", "max_tokens")
"""Request fields the adapter sets (``extra_parameters`` may not)."""


class AnthropicSummarizer(LLMSummarizer):
    """Summaries from a Claude model (see :class:`LLMSummarizer` for retries and the prompt).

    Args:
        model: The model name, e.g. ``"claude-haiku-4-5"``.
        client: An ``anthropic.AsyncAnthropic`` to use (its own retries are turned off for these requests;
            it is not closed by :meth:`aclose`). Created from ``base_url`` and ``api_key`` when omitted.
        base_url: The endpoint (default: ``ANTHROPIC_BASE_URL``, unless empty, or Anthropic's), e.g. a
            gateway.
        api_key: The key (default: ``ANTHROPIC_API_KEY``).
        extra_parameters: More request fields (``{"temperature": 0}``, ``{"metadata": {...}}``); not the
            ones the adapter sets (``model``, ``system``, ``messages``, ``max_tokens``, ``timeout``,
            ``stream``).
        **options: The shared options of :class:`LLMSummarizer` (``timeout``, ``max_retries``,
            ``total_timeout``, ``max_input_tokens``, ``instructions``, ``counter``, ``backoff``,
            ``max_backoff``, ``max_retry_wait``).

    Raises:
        MissingDependencyError: the ``anthropic`` package is not installed.
        ConfigurationError: no API key.
        InvalidArgumentError: an argument is out of range (a synchronous ``client``, a ``base_url`` that is
            no http(s) URL, an ``extra_parameters`` field the adapter sets).
    """

    provider: ClassVar[str] = "anthropic"

    def __init__(
        self,
        model: str,
        *,
        client: AsyncAnthropic | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        extra_parameters: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(model, **options)
        try:
            import anthropic
        except ImportError:
            raise MissingDependencyError("AnthropicSummarizer", "anthropic", "anthropic") from None
        check_client(client, anthropic, "anthropic.AsyncAnthropic")
        extra = check_extra_parameters(extra_parameters, _RESERVED)
        self._sdk: Any = anthropic
        from anthropic.types import Message as AnswerMessage

        self._answer_type: Any = AnswerMessage
        owns_client = client is None
        if client is None:
            import os

            if (
                api_key is None
                and not os.environ.get("ANTHROPIC_API_KEY")
                and not os.environ.get("ANTHROPIC_AUTH_TOKEN")
            ):
                raise ConfigurationError(
                    "summarizer",
                    f"anthropic:{model}",
                    "an API key: set ANTHROPIC_API_KEY or pass api_key=",
                )
            client = anthropic.AsyncAnthropic(
                base_url=resolve_base_url(base_url, "ANTHROPIC_BASE_URL", _ANTHROPIC_URL),
                api_key=api_key,
                max_retries=0,
                timeout=self.timeout,
            )
        self.client: AsyncAnthropic = client.with_options(max_retries=0)
        """The client requests go through (retries are ours, not the SDK's)."""
        if owns_client:
            self._client_to_close = client
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
            "system": prompt.instructions,
            "messages": [{"role": "user", "content": prompt.transcript}],
            "max_tokens": prompt.max_output_tokens,
            "timeout": request_timeout,
        }
        # streamed: a server ignoring the output limit sent 22 MB, which the SDK parsed on the event loop
        async with self.client.messages.with_streaming_response.create(**parameters) as raw:
            response = await read_answer(raw, self._answer_type, answer_byte_limit(prompt.max_output_tokens))
        usage = getattr(response, "usage", None)  # a compatible server may leave it out
        # input_tokens leaves out what the prompt cache read or wrote: input (and billed) all the same
        inputs = [
            usage_count(getattr(usage, field, None))
            for field in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
        ]
        known = [count for count in inputs if count is not None]
        summary_usage = SummaryUsage(
            input_tokens=usage_count(sum(known)) if known else None,
            output_tokens=usage_count(getattr(usage, "output_tokens", None)),
            model=response.model if isinstance(response.model, str) and response.model else self.model,
            provider=self.provider,
        )
        blocks = response.content or []
        text = "".join(
            block.text
            for block in blocks
            if getattr(block, "type", None) == "text" and isinstance(block.text, str)
        )
        reason = getattr(response, "stop_reason", None)
        if reason == "refusal":
            # the text written before Claude's safety check stopped it: cut short, or a refusal
            raise EmptyAnswer("the model refused to answer (stop_reason 'refusal')", summary_usage)
        if not text.strip():
            raise EmptyAnswer(
                f"the response has no text (stop_reason {reason!r}){server_error_note(response)}",
                summary_usage,
            )
        if reason == "max_tokens":
            summary_usage = dataclasses.replace(summary_usage, cut_at_limit=True)
        return text, summary_usage

    def _client_closed(self) -> bool:
        return bool(self.client.is_closed())

    def _classify(self, error: Exception) -> RequestFailure:
        failure = classify_sdk_error(error, self._sdk)
        path = urlsplit(str(self.client.base_url)).path.rstrip("/")
        if failure.status_code == 404 and path.endswith("/v1"):
            # an OpenAI-style base_url: the SDK appends /v1/messages itself
            hint = "an Anthropic base_url goes without the /v1, which the SDK adds"
            return dataclasses.replace(failure, description=f"{failure.description} ({hint})")
        return failure
