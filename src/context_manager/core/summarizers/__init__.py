"""LLM summarizers and the circuit breaker that guards any summarizer.

::

    from context_manager.core.summarizers import OpenAISummarizer, AnthropicSummarizer, SummarizerGuard

    manager = EnhancedContextManager(config, summarizer=OpenAISummarizer("gpt-4o-mini"))
    # or by configuration: ContextManagerConfig(summarizer="anthropic:claude-haiku-4-5")

Submodules load lazily, and the provider SDKs only when an adapter is created.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "AnthropicSummarizer": "context_manager.core.summarizers.anthropic_messages",
    "CircuitState": "context_manager.core.summarizers.guard",
    "LLMSummarizer": "context_manager.core.summarizers.llm",
    "OpenAISummarizer": "context_manager.core.summarizers.openai_chat",
    "SummarizerGuard": "context_manager.core.summarizers.guard",
    "SummaryPrompt": "context_manager.core.summarizers.prompt",
    "SummaryReport": "context_manager.core.summarizers.guard",
    "SummaryResponse": "context_manager.core.summarizers.llm",
    "SummaryUsage": "context_manager.core.summarizers.llm",
    "build_summary_prompt": "context_manager.core.summarizers.prompt",
    "parse_summarizer_spec": "context_manager.core.summarizers.spec",
    "summarizer_from_spec": "context_manager.core.summarizers.spec",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'context_manager.core.summarizers' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # pragma: no cover
    # ruff: noqa: F401 - re-exported lazily through __all__
    from context_manager.core.summarizers.anthropic_messages import AnthropicSummarizer
    from context_manager.core.summarizers.guard import CircuitState, SummarizerGuard, SummaryReport
    from context_manager.core.summarizers.llm import LLMSummarizer, SummaryResponse, SummaryUsage
    from context_manager.core.summarizers.openai_chat import OpenAISummarizer
    from context_manager.core.summarizers.prompt import SummaryPrompt, build_summary_prompt
    from context_manager.core.summarizers.spec import parse_summarizer_spec, summarizer_from_spec
