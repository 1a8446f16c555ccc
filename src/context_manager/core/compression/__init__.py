"""Compression of the context window: the :class:`Summarizer` protocol, its extractive default and planning.

Everything here is plain synchronous logic except calling a summarizer, which is async because a real one
(an LLM) does I/O. The window (:mod:`context_manager.core.context_window`) runs a compression in steps:

1. :func:`~context_manager.core.compression.planning.decide_eviction` decides, without mutating anything,
   which units are evicted and which kept messages are cut to head + tail and by how much
   (:func:`plan_compression` does the same for a list of messages and makes the cuts);
2. a :class:`Summarizer` turns the evicted messages (and the previous rolling summary) into one text;
3. the window swaps the new state in at once.

Messages are grouped into units (:mod:`~context_manager.core.compression.units`): an assistant message that
calls tools and every tool message answering it form one unit, which is kept or evicted whole, so a provider
never sees a tool result without its call. Units are evicted lowest priority first, oldest first within a
priority; system, pinned and critical messages, the latest user message, the newest unit and units waiting
for tool results are never evicted.

Modules: :mod:`.units` (grouping, the incremental :class:`UnitIndex`), :mod:`.truncation` (head + tail cuts),
:mod:`.planning` (the rules), :mod:`.summarizer` (the protocol and the extractive summarizer).
"""

from context_manager.core.compression.planning import (
    MIN_SUMMARY_TOKENS,
    CompressionPlan,
    EvictionDecision,
    decide_eviction,
    plan_compression,
)
from context_manager.core.compression.summarizer import (
    SUMMARY_METADATA_KEY,
    ExtractiveSummarizer,
    Summarizer,
    check_summary_text,
    is_summary,
)
from context_manager.core.compression.truncation import (
    MIN_EDGE_TOKENS,
    TRUNCATED_METADATA_KEY,
    min_keeping_tokens,
    min_readable_tokens,
    min_truncated_tokens,
    truncate_message,
    truncate_middle,
)
from context_manager.core.compression.units import MessageUnit, UnitIndex, group_into_units

__all__ = [
    "MIN_EDGE_TOKENS",
    "MIN_SUMMARY_TOKENS",
    "SUMMARY_METADATA_KEY",
    "TRUNCATED_METADATA_KEY",
    "CompressionPlan",
    "EvictionDecision",
    "ExtractiveSummarizer",
    "MessageUnit",
    "Summarizer",
    "UnitIndex",
    "check_summary_text",
    "decide_eviction",
    "group_into_units",
    "is_summary",
    "min_keeping_tokens",
    "min_readable_tokens",
    "min_truncated_tokens",
    "plan_compression",
    "truncate_message",
    "truncate_middle",
]
