"""Property tests of the ranking (pure functions): isolation between owners, deterministic ties, monotone in
importance, a permutation of its input; the words of the feedback query."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from context_manager.core.memory.ranking import (
    FEATURES,
    Candidate,
    RankingWeights,
    candidate_features,
    feedback_terms,
    fuse,
)

NOW = 1_700_000_000.0
USERS = (None, "alice", "bob")
SESSIONS = ("s1", "s2")


@st.composite
def candidate_lists(draw: st.DrawFn) -> list[Candidate]:
    count = draw(st.integers(min_value=1, max_value=25))
    candidates = []
    for position in range(count):
        conversational = draw(st.booleans())
        candidates.append(
            Candidate(
                id=f"m{position:02d}",
                bm25=draw(st.sampled_from([0.0, 0.5, 1.0, 2.5, 7.0])),  # few values: many ties
                cosine=draw(st.one_of(st.none(), st.sampled_from([-0.2, 0.0, 0.3, 0.8]))),
                importance=draw(st.sampled_from([0.0, 0.25, 0.5, 1.0])),
                timestamp=NOW - draw(st.sampled_from([0, 3600, 86400 * 40])),
                access_count=draw(st.sampled_from([0, 1, 7])),
                session=(draw(st.sampled_from(USERS)), draw(st.sampled_from(SESSIONS)))
                if conversational
                else None,
                turn_index=draw(st.integers(min_value=0, max_value=6)) if conversational else None,
                speaker=draw(st.sampled_from([None, "user", "Ana"])),
                feedback=draw(st.sampled_from([0.0, 1.5, 4.0])),
                states_time=draw(st.booleans()),
            )
        )
    return candidates


weights_strategy = st.builds(
    RankingWeights,
    bm25=st.floats(0, 2),
    previous=st.floats(0, 1),
    next=st.floats(0, 1),
    session=st.floats(0, 1),
    speaker=st.floats(0, 1),
    recency=st.floats(0, 1),
    importance=st.floats(0.01, 1),
    access=st.floats(0, 1),
    vector=st.floats(0, 2),
    period=st.floats(0, 2),
    feedback=st.floats(0, 2),
    time=st.floats(0, 2),
)
PERIODS = frozenset({(2023, 11)})  # NOW is in November 2023; memories 40 days older are not


def _copy(candidates: list[Candidate]) -> list[Candidate]:
    return [Candidate(**{name: getattr(c, name) for name in Candidate.__slots__}) for c in candidates]


@settings(max_examples=100, deadline=None)
@given(candidate_lists(), weights_strategy, st.randoms(use_true_random=False))
def test_order_is_a_deterministic_permutation(
    candidates: list[Candidate], weights: RankingWeights, shuffler: random.Random
) -> None:
    ranked = [
        c.id
        for c in fuse(
            _copy(candidates),
            weights,
            now=NOW,
            half_life_days=30,
            query_periods=PERIODS,
            query_asks_when=True,
        )
    ]
    assert sorted(ranked) == sorted(c.id for c in candidates)
    shuffled = _copy(candidates)
    shuffler.shuffle(shuffled)
    reordered = fuse(
        shuffled, weights, now=NOW, half_life_days=30, query_periods=PERIODS, query_asks_when=True
    )
    assert [c.id for c in reordered] == ranked


@settings(max_examples=100, deadline=None)
@given(candidate_lists(), weights_strategy, st.data())
def test_more_importance_never_ranks_lower(
    candidates: list[Candidate], weights: RankingWeights, data: st.DataObject
) -> None:
    chosen = data.draw(st.integers(min_value=0, max_value=len(candidates) - 1))
    target = candidates[chosen].id
    ranked = fuse(
        _copy(candidates), weights, now=NOW, half_life_days=30, query_periods=PERIODS, query_asks_when=True
    )
    before = [c.id for c in ranked].index(target)
    raised = _copy(candidates)
    raised[chosen].importance = min(1.0, raised[chosen].importance + data.draw(st.floats(0.01, 1.0)))
    ranked = fuse(raised, weights, now=NOW, half_life_days=30, query_periods=PERIODS, query_asks_when=True)
    after = [c.id for c in ranked].index(target)
    assert after <= before


@settings(max_examples=100, deadline=None)
@given(candidate_lists(), candidate_lists())
def test_conversation_features_never_cross_owners(mine: list[Candidate], theirs: list[Candidate]) -> None:
    """Another owner's turns (even of a session with the same id) never feed my turns' neighbour and session
    features; only the per-query normalisation (by the best score) may differ."""
    for candidate in mine:
        candidate.session = None if candidate.session is None else ("alice", candidate.session[1])
    for candidate in theirs:
        candidate.id = "other-" + candidate.id
        candidate.session = None if candidate.session is None else ("bob", candidate.session[1])
    alone = candidate_features(mine, now=NOW, half_life_days=30)
    mixed = candidate_features(mine + theirs, now=NOW, half_life_days=30)[: len(mine)]
    previous, following = FEATURES.index("previous"), FEATURES.index("next")
    for own, shared, candidate in zip(alone, mixed, mine, strict=True):
        # a feature that is 0 alone stays 0: nothing of bob's leaks in
        for column in (previous, following, FEATURES.index("session")):
            if own[column] == 0.0:
                assert shared[column] == 0.0, (candidate, FEATURES[column])


words_strategy = st.lists(
    st.sampled_from(["otter", "kayak", "reef", "the", "2023", "tide", "gull"]), max_size=6
)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(words_strategy, max_size=4),
    words_strategy,
    st.dictionaries(st.sampled_from(["otter", "kayak", "reef", "the", "2023", "tide"]), st.integers(0, 60)),
    st.integers(0, 4),
    st.randoms(use_true_random=False),
)
def test_feedback_terms_come_from_the_hits_and_ignore_their_order(
    hits: list[list[str]],
    query: list[str],
    frequencies: dict[str, int],
    count: int,
    shuffler: random.Random,
) -> None:
    total = 50
    chosen = feedback_terms(hits, query, frequencies, total, count)
    assert len(chosen) <= count and len(set(chosen)) == len(chosen)
    for word in chosen:
        assert any(word in hit for hit in hits) and word not in query and not word.isdigit()
        assert 2 <= frequencies[word] < total
    shuffled = [shuffler.sample(hit, len(hit)) for hit in hits]
    shuffler.shuffle(shuffled)
    assert feedback_terms(shuffled, query, frequencies, total, count) == chosen
