"""Near-duplicate detection for consolidation (pure functions)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from context_manager.core.memory.index import query_tokens
from context_manager.core.memory.models import Memory


def near_duplicate_groups(
    memories: Sequence[Memory],
    threshold: float,
    cosine: Callable[[str, str], float | None] | None,
    semantic_threshold: float,
) -> list[list[Memory]]:
    """Group near-duplicates per user: candidate pairs share one of their rarest words."""
    unique: dict[str, Memory] = {}
    for memory in memories:
        unique.setdefault(memory.id, memory)
    items = list(unique.values())
    words = [frozenset(query_tokens(memory.content, limit=10_000)) for memory in items]
    postings: dict[tuple[str | None, str], list[int]] = {}
    for position, (memory, word_set) in enumerate(zip(items, words, strict=True)):
        for word in word_set:
            postings.setdefault((memory.user_id, word), []).append(position)
    parent = list(range(len(items)))

    def find(position: int) -> int:
        while parent[position] != position:
            parent[position] = parent[parent[position]]
            position = parent[position]
        return position

    for position, (memory, word_set) in enumerate(zip(items, words, strict=True)):
        if not word_set:
            continue
        rarest = sorted(word_set, key=lambda w: len(postings[(memory.user_id, w)]))[:3]
        partners: set[int] = set()
        for word in rarest:
            partners.update(postings[(memory.user_id, word)][:200])
        for other in partners:
            if other <= position:
                continue
            other_words = words[other]
            similarity = len(word_set & other_words) / len(word_set | other_words) if other_words else 0.0
            similar = similarity >= threshold
            if not similar and cosine is not None:
                value = cosine(memory.id, items[other].id)
                similar = value is not None and value >= semantic_threshold
            if similar:
                parent[find(other)] = find(position)
    groups: dict[int, list[Memory]] = {}
    for position, memory in enumerate(items):
        groups.setdefault(find(position), []).append(memory)
    return [group for group in groups.values() if len(group) > 1]
