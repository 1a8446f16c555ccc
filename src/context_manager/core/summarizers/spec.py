"""Summarizers named in the configuration: ``summarizer="openai:MODEL"`` or ``"anthropic:MODEL"``.

The provider is the text before the first colon; the rest is the model name, which may itself contain
colons (``"openai:llama3.1:8b"`` for a local server). Parsing touches no SDK; building imports one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from context_manager.core.errors import ConfigurationError

if TYPE_CHECKING:
    from context_manager.core.summarizers.llm import LLMSummarizer
    from context_manager.core.tokens import TokenCounter

__all__ = ["SUMMARIZER_PROVIDERS", "parse_summarizer_spec", "summarizer_from_spec"]

SUMMARIZER_PROVIDERS = ("openai", "anthropic")
"""Providers the ``summarizer`` option knows."""

_ALLOWED = "'openai:MODEL' (any OpenAI-compatible endpoint) or 'anthropic:MODEL'"


def parse_summarizer_spec(spec: str) -> tuple[str, str]:
    """Split ``"provider:model"`` into its parts.

    Raises:
        ConfigurationError: unknown provider or no model name.
    """
    if not isinstance(spec, str):
        raise ConfigurationError("summarizer", spec, _ALLOWED)
    provider, separator, model = spec.strip().partition(":")
    provider = provider.strip().lower()
    model = model.strip()
    if not separator or provider not in SUMMARIZER_PROVIDERS or not model:
        raise ConfigurationError("summarizer", spec, _ALLOWED)
    return provider, model


def summarizer_from_spec(
    spec: str,
    *,
    base_url: str | None = None,
    total_timeout: float | None = None,
    counter: TokenCounter | None = None,
) -> LLMSummarizer:
    """Build the summarizer ``spec`` names (the SDK is imported here).

    Args:
        spec: ``"openai:MODEL"`` or ``"anthropic:MODEL"``.
        base_url: The endpoint (an OpenAI-compatible local server, a gateway); the SDK's default otherwise.
        total_timeout: Seconds one summary may take, retries included (also bounds each request).
        counter: Token counter for the prompt budget.

    Raises:
        ConfigurationError: a bad spec, or no API key where one is needed.
        MissingDependencyError: the provider's SDK is not installed.
    """
    provider, model = parse_summarizer_spec(spec)
    options: dict[str, object] = {"base_url": base_url, "counter": counter}
    if total_timeout is not None:
        options["total_timeout"] = total_timeout
        options["timeout"] = min(30.0, total_timeout)
    if provider == "openai":
        from context_manager.core.summarizers.openai_chat import OpenAISummarizer

        return OpenAISummarizer(model, **options)  # type: ignore[arg-type]
    from context_manager.core.summarizers.anthropic_messages import AnthropicSummarizer

    return AnthropicSummarizer(model, **options)  # type: ignore[arg-type]
