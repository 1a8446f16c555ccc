from __future__ import annotations

import math
import re
import sqlite3
import unicodedata

import pytest

from context_manager.core.memory.index import TOKENIZER, build_match, owner_token, query_tokens
from context_manager.core.memory.ranking import (
    ABLATIONS,
    FEATURES,
    Candidate,
    RankingWeights,
    asks_when,
    bm25_idf,
    candidate_features,
    feedback_terms,
    fts5_idf,
    fuse,
    idf_corrections,
    in_period,
    learned_weights,
    mentions_time,
    named_periods,
    named_speakers,
    parse_session_date,
    recency_decay,
    uniform_correction,
    without_speaker_names,
)

NOW = 1_700_000_000.0


def test_recency_decay_halves_at_half_life() -> None:
    assert recency_decay(0, 30) == 1.0
    assert recency_decay(-5, 30) == 1.0
    assert recency_decay(30 * 86400, 30) == pytest.approx(0.5)
    assert recency_decay(60 * 86400, 30) == pytest.approx(0.25)


def test_bm25_is_normalised_and_dominates() -> None:
    strong = Candidate("a", bm25=8.0, timestamp=NOW)
    weak = Candidate("b", bm25=2.0, timestamp=NOW)
    weights = RankingWeights(session=0.0)
    ranked = fuse([weak, strong], weights, now=NOW, half_life_days=30)
    assert [c.id for c in ranked] == ["a", "b"]
    # lexical part of a is exactly 1 (normalised), b is 0.25
    assert ranked[0].score - ranked[1].score == pytest.approx(0.75 * weights.bm25)


def test_importance_and_recency_break_ties() -> None:
    weights = RankingWeights(recency=0.05)
    old = Candidate("old", bm25=5.0, timestamp=NOW - 90 * 86400)
    new = Candidate("new", bm25=5.0, timestamp=NOW)
    assert fuse([old, new], weights, now=NOW, half_life_days=30)[0].id == "new"
    low = Candidate("low", bm25=5.0, importance=0.1, timestamp=NOW)
    high = Candidate("high", bm25=5.0, importance=0.9, timestamp=NOW)
    assert fuse([low, high], RankingWeights(), now=NOW, half_life_days=30)[0].id == "high"


def test_neighbour_turns_score_through_their_neighbours() -> None:
    session = (None, "s1")
    question = Candidate("q", bm25=10.0, session=session, turn_index=3, timestamp=NOW)
    answer = Candidate("a", bm25=0.0, session=session, turn_index=4, timestamp=NOW)
    before = Candidate("b", bm25=0.0, session=session, turn_index=2, timestamp=NOW)
    unrelated = Candidate("u", bm25=0.0, session=session, turn_index=9, timestamp=NOW)
    weights = RankingWeights(session=0, recency=0, importance=0, access=0, previous=0.7, next=0.5)
    candidates = [question, answer, before, unrelated]
    scores = {c.id: c.score for c in fuse(candidates, weights, now=NOW, half_life_days=30)}
    assert scores["a"] == pytest.approx(0.7)  # the turn after the match: its previous turn matched
    assert scores["b"] == pytest.approx(0.5)  # the turn before: its next turn matched
    assert scores["u"] == 0.0
    off = weights.with_changes(neighbour_context=False)
    scores = {c.id: c.score for c in fuse([question, answer], off, now=NOW, half_life_days=30)}
    assert scores["a"] == 0.0


def test_candidate_features_are_in_unit_range_and_ordered() -> None:
    session = (None, "s1")
    rows = candidate_features(
        [
            Candidate(
                "a",
                bm25=4.0,
                cosine=0.5,
                session=session,
                turn_index=0,
                speaker="Ana",
                timestamp=NOW,
                feedback=3.0,
            ),
            Candidate("b", bm25=2.0, cosine=-0.2, session=session, turn_index=1, access_count=3, timestamp=0),
        ],
        now=NOW,
        half_life_days=30,
        query_speakers=named_speakers(["ana"]),
    )
    first, second = (dict(zip(FEATURES, row, strict=True)) for row in rows)
    assert first == pytest.approx(
        {
            "bm25": 1.0,
            "previous": 0.0,
            "next": 0.5,
            "session": 1.0,
            "speaker": 1.0,
            "recency": 1.0,
            "importance": 0.5,
            "access": 0.0,
            "vector": 1.0,
            "period": 0.0,
            "feedback": 1.0,
            "time": 0.0,
        }
    )
    assert second["previous"] == 1.0 and second["vector"] == 0.0 and 0 < second["access"] < 1
    assert second["feedback"] == 0.0
    assert all(0.0 <= value <= 1.0 for row in rows for value in row)


def test_speaker_boost_and_first_person() -> None:
    assert "user" in named_speakers(["what", "did", "i", "say"])
    assert "user" not in named_speakers(["what", "did", "caroline", "say"])
    by_user = Candidate("u", bm25=5.0, speaker="user", timestamp=NOW)
    by_bot = Candidate("b", bm25=5.0, speaker="assistant", timestamp=NOW)
    ranked = fuse(
        [by_bot, by_user], RankingWeights(), now=NOW, half_life_days=30, query_speakers=named_speakers(["my"])
    )
    assert ranked[0].id == "u"
    caroline = Candidate("c", bm25=5.0, speaker="Caroline Smith", timestamp=NOW - 10)
    ranked = fuse(
        [by_bot, caroline],
        RankingWeights(),
        now=NOW,
        half_life_days=30,
        query_speakers=named_speakers(["caroline"]),
    )
    assert ranked[0].id == "c"


@pytest.mark.parametrize("speaker", ["İlker", unicodedata.normalize("NFD", "José Ruiz"), "JOSÉ"])
def test_a_speaker_is_named_by_the_query_words_in_any_unicode_form(speaker: str) -> None:
    named = Candidate("n", bm25=5.0, speaker=speaker, timestamp=NOW - 10)
    other = Candidate("o", bm25=5.0, speaker="assistant", timestamp=NOW)
    query = "What did İlker say?" if speaker == "İlker" else "What did José say?"
    ranked = fuse(
        [other, named],
        RankingWeights(),
        now=NOW,
        half_life_days=30,
        query_speakers=named_speakers(query_tokens(query)),
    )
    assert ranked[0].id == "n"


def test_named_periods_reads_months_and_years() -> None:
    assert named_periods("What did Gina find for her store on 1 February, 2023?") == {(2023, 2)}
    assert named_periods("What setback did Melanie face in October 2023?") == {(2023, 10)}
    assert named_periods("Where did Jon go in may?") == {(None, 5)}
    assert named_periods("What did she do on May 7?") == {(None, 5)}
    assert named_periods("How many times has Melanie gone to the beach in 2023?") == {(2023, None)}
    assert named_periods("Trips in June or July 2022 and 2023") == {
        (year, month) for year in (2022, 2023) for month in (6, 7)
    }
    # "may" and "march" as words, not months
    assert named_periods("What may Caroline pursue as a career?") == frozenset()
    assert named_periods("Why did they march?") == frozenset()
    assert named_periods("What is Nate's favourite game?") == frozenset()


def test_in_period_uses_the_utc_calendar() -> None:
    may_8 = parse_session_date("2023-05-08T13:56:00")
    assert may_8 is not None
    assert in_period(may_8, frozenset({(2023, 5)}))
    assert in_period(may_8, frozenset({(None, 5)})) and in_period(may_8, frozenset({(2023, None)}))
    assert not in_period(may_8, frozenset({(2022, 5)})) and not in_period(may_8, frozenset({(2023, 6)}))
    assert not in_period(may_8, frozenset())


@pytest.mark.parametrize("moment", [1e20, -1e17, 253402387200.0, -62135683200.0])
def test_a_time_outside_the_years_1_to_9999_is_in_no_period(moment: float) -> None:
    """A memory stored with such a time (an import took 1e20) made every search naming a month fail with a
    ValueError ("year ... is out of range"); it is now in no period, and the years 1 and 9999 still are."""
    assert not in_period(moment, frozenset({(None, 5), (2023, None), (None, 1)}))
    assert in_period(-62135596800.0, frozenset({(1, 1)}))
    assert in_period(253402300799.0, frozenset({(9999, 12)}))


def test_period_feature_prefers_the_memory_of_the_named_month() -> None:
    session_may = parse_session_date("2023-05-08")
    session_june = parse_session_date("2023-06-20")
    assert session_may is not None and session_june is not None
    in_june = Candidate("june", bm25=5.0, timestamp=session_june)
    in_may = Candidate("may", bm25=4.0, timestamp=session_may)
    unmatched = Candidate("none", bm25=0.0, timestamp=session_may)  # no evidence of its own: no date boost
    weights = RankingWeights(period=1.0, recency=0.0)
    periods = named_periods("what did she paint in May 2023")
    ranked = fuse([in_june, in_may, unmatched], weights, now=NOW, half_life_days=30, query_periods=periods)
    assert [c.id for c in ranked] == ["may", "june", "none"]
    assert ranked[2].score == pytest.approx(0.1 * 0.5)  # importance only
    without = fuse([in_june, in_may], weights, now=NOW, half_life_days=30)
    assert [c.id for c in without] == ["june", "may"]


def test_vector_channel_is_weighted_fusion() -> None:
    lexical = Candidate("l", bm25=5.0, cosine=0.1, timestamp=NOW)
    semantic = Candidate("s", bm25=4.0, cosine=0.9, timestamp=NOW)
    assert fuse([lexical, semantic], RankingWeights(vector=1.0), now=NOW, half_life_days=30)[0].id == "s"
    no_vector = RankingWeights(vector=0.0)
    assert fuse([lexical, semantic], no_vector, now=NOW, half_life_days=30)[0].id == "l"


def test_shipped_weights_are_learned_data() -> None:
    learned = learned_weights()
    assert set(learned) == {"lexical", "embedder"}
    for weights in learned.values():
        assert set(weights) == set(FEATURES)
        assert weights["bm25"] == 1.0  # the scale
        assert all(value >= 0.0 for value in weights.values())
        assert weights["feedback"] > 0.0  # the feedback query earned its place in the held-out fit
    default = RankingWeights()
    assert default.speaker == learned["lexical"]["speaker"]
    assert default.vector == learned["embedder"]["vector"]
    assert RankingWeights.learned(embedder=True).session == learned["embedder"]["session"]
    assert RankingWeights.learned(recency=0.5).recency == 0.5


def test_session_date_parsing() -> None:
    assert parse_session_date("2023-05-08") == pytest.approx(1683504000.0)
    assert parse_session_date("8 May 2023") is None
    assert parse_session_date(None) is None


def test_query_tokens_strip_syntax() -> None:
    assert query_tokens('NEAR("a" b) AND c* -d:e ^f OR "g') == [
        "near",
        "a",
        "b",
        "and",
        "c",
        "d",
        "e",
        "f",
        "or",
        "g",
    ]
    assert query_tokens("!!! ()") == []
    assert query_tokens("Über café") == ["über", "café"]
    assert len(query_tokens(" ".join(f"w{i}" for i in range(100)))) == 32


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("naïve mañana", ["naïve", "mañana"]),  # NFC
        (unicodedata.normalize("NFD", "Naïve MAÑANA"), ["naïve", "mañana"]),  # combining marks stay inside
        ("İzmir İZMİR izmir", ["izmir"]),  # not "i" + "zmir" ("İ".lower() is "i" + a combining dot)
        ("\u0301 x\u0301y", ["x\u0301y"]),  # a word starts with a letter; FTS5 folds the mark away
        ("Kubernetes, k8s!", ["kubernetes", "k8s"]),
    ],
)
def test_query_tokens_split_words_where_fts5_does(text: str, tokens: list[str]) -> None:
    assert query_tokens(text) == [unicodedata.normalize("NFC", token) for token in tokens]
    connection = sqlite3.connect(":memory:")
    connection.execute(f"CREATE VIRTUAL TABLE t USING fts5(x, tokenize='{TOKENIZER}')")
    connection.execute("INSERT INTO t(rowid, x) VALUES (1, ?)", (text,))
    for token in query_tokens(text):  # each token is one indexed word, and finds the text
        assert connection.execute("SELECT rowid FROM t WHERE t MATCH ?", (f'"{token}"',)).fetchall() == [(1,)]


def test_build_match_quotes_everything() -> None:
    match = build_match(["a", 'b"c'], owner_token("alice"))
    assert match.startswith('owner : "owner')
    assert '"b""c"' in match
    assert build_match(["x"], None) == '{content tags context date} : ("x")'
    assert build_match(["x"], None, column="tags") == 'tags : ("x")'
    assert owner_token("alice") != owner_token("bob") != owner_token(None)


def test_weights_are_frozen() -> None:
    weights = RankingWeights()
    with pytest.raises(AttributeError):
        weights.bm25 = 2.0  # type: ignore[misc]
    assert weights.effective_columns.context > 0
    assert weights.with_changes(context_columns=False).effective_columns.context == 0


def test_prune_common_terms() -> None:
    from context_manager.core.memory.ranking import prune_common_terms

    tokens = ["the", "zebra", "of"]
    frequencies = {"the": 9000, "zebra": 3, "of": 8000}
    assert prune_common_terms(tokens, tokens, frequencies, 10000, 0.1) == ["zebra"]
    assert prune_common_terms(tokens, tokens, frequencies, 10000, 1.0) == tokens
    # below the document floor nothing is dropped
    assert prune_common_terms(tokens, tokens, frequencies, 10000, 0.1, min_documents=10000) == tokens
    # every word common: the rarest one that matches stays
    assert prune_common_terms(["the", "of"], ["the", "of"], frequencies, 10000, 0.1) == ["of"]
    # a kept word that matches nothing does not count
    assert prune_common_terms(["the", "qqq"], ["the", "qqq"], frequencies, 10000, 0.1) == ["qqq", "the"]
    assert prune_common_terms(["qqq"], ["qqq"], {}, 10000, 0.1) == ["qqq"]


def test_prune_caps_document_frequency() -> None:
    from context_manager.core.memory.ranking import prune_common_terms

    frequencies = {"common": 5000, "rare": 10}
    tokens = ["common", "rare"]
    # 5% of a million is far above the cap: the cap decides
    assert prune_common_terms(tokens, tokens, frequencies, 1_000_000, 0.1, 1000, 2000) == ["rare"]
    assert prune_common_terms(tokens, tokens, frequencies, 1_000_000, 0.1, 1000, None) == tokens


def test_fts5_idf_matches_sqlite_and_clamps() -> None:
    assert fts5_idf(1000, 1) == pytest.approx(math.log(999.5 / 1.5))
    assert fts5_idf(2, 1) == 1e-6  # a word in half of a tiny index weighs nothing in FTS5
    assert fts5_idf(10, 9) == 1e-6
    assert fts5_idf(0, 5) == 1e-6  # a stale total (a write landed between two reads) does not raise


def test_idf_corrections_score_every_tier_as_one_index() -> None:
    # a tiny tier where "axolotl" is in 1 of 2 rows; overall it is in 1 of 1,002
    corrections = idf_corrections(
        ["axolotl", "the", "absent"], {"axolotl": 1, "the": 1}, 2, {"axolotl": 1, "the": 900}, 1002
    )
    assert set(corrections) == {"axolotl", "the"}  # a word absent from the tier needs none
    assert corrections["axolotl"] * fts5_idf(2, 1) == pytest.approx(bm25_idf(1002, 1))
    assert corrections["the"] * fts5_idf(2, 1) == pytest.approx(bm25_idf(1002, 900))
    # one tier holding everything: rare words need (almost) no correction
    one = idf_corrections(["a", "b"], {"a": 3, "b": 50}, 1000, {"a": 3, "b": 50}, 1000)
    assert one["a"] == pytest.approx(1.0, rel=0.01) and one["b"] == pytest.approx(1.0, rel=0.03)
    # a word in most rows of a tiny store still counts (FTS5 alone gives it 1e-6)
    assert bm25_idf(13, 7) > 0.5 and fts5_idf(13, 7) == 1e-6


def test_uniform_correction() -> None:
    assert uniform_correction({}) == 1.0
    assert uniform_correction({"a": 1.0, "b": 1.05}) == pytest.approx(1.025)
    assert uniform_correction({"a": 1.0, "b": 2.0}) is None
    assert uniform_correction({"a": 1.0, "b": 1.3}, tolerance=0.5) == pytest.approx(1.15)


def test_feedback_terms_are_the_rarest_words_of_the_best_hits() -> None:
    frequencies = {"turtle": 3, "tank": 9, "shelly": 2, "the": 90, "pet": 5, "2023": 4, "once": 1, "all": 100}
    hits = [["shelly", "turtle", "the", "pet", "2023"], ["turtle", "tank", "once", "all"]]
    # turtle is in both hits: log(100/3) twice outweighs shelly's log(100/2) once
    assert feedback_terms(hits, ["pet"], frequencies, 100, 3) == ["turtle", "shelly", "tank"]
    # the question's own words, numbers, words of a single memory or of every memory are never added
    every = feedback_terms(hits, ["pet"], frequencies, 100, 10)
    assert not {"pet", "2023", "once", "all"} & set(every)
    assert every[-1] == "the"  # common words come last
    assert feedback_terms(hits, [], frequencies, 100, 0) == []
    assert feedback_terms(hits, [], {}, 100, 5) == []  # words the store does not know
    assert feedback_terms([], ["pet"], frequencies, 100, 5) == []
    # with min_documents=3 a word of two rows (one turn: its row and the next turn's context) is left out
    assert "shelly" not in feedback_terms(hits, ["pet"], frequencies, 100, 5, min_documents=3)


def test_feedback_terms_break_ties_alphabetically() -> None:
    frequencies = {"kayak": 4, "canoe": 4, "raft": 4}
    for hits in (["kayak", "raft", "canoe"], ["raft", "canoe", "kayak"]):
        assert feedback_terms([hits], [], frequencies, 50, 2) == ["canoe", "kayak"]


def test_feedback_feature_ranks_what_the_expanded_query_found() -> None:
    found_by_feedback = Candidate("f", bm25=0.0, feedback=4.0, timestamp=NOW)
    unrelated = Candidate("u", bm25=0.0, feedback=0.0, timestamp=NOW + 1)
    ranked = fuse([unrelated, found_by_feedback], RankingWeights(feedback=1.0), now=NOW, half_life_days=30)
    assert ranked[0].id == "f"
    ranked = fuse([unrelated, found_by_feedback], RankingWeights(feedback=0.0), now=NOW, half_life_days=30)
    assert ranked[0].id == "u"  # without it they tie and the newer wins


def test_asks_when_and_mentions_time() -> None:
    assert asks_when("When did Joanna finish her first screenplay?")
    assert asks_when("  what year did Jon start dancing?")
    assert asks_when("How long ago did Maria join the gym?")
    assert not asks_when("Where did Joanna submit her screenplay?")
    assert not asks_when("What did Jon say when he won?")  # "when" not asking
    assert mentions_time("I finally finished it last Friday!")
    assert mentions_time("We moved here two years ago.")
    assert mentions_time("Back in 2019 I lived in Ohio.")
    assert mentions_time("See you on Monday")
    assert not mentions_time("I love painting sunsets with my kids.")
    assert not mentions_time("Lastly, the yearbook")  # whole words only


def test_time_feature_prefers_the_turn_that_says_when() -> None:
    # both turns match the question equally; only the answer says when it happened
    says_when = Candidate("w", bm25=5.0, states_time=True, timestamp=NOW - 10)
    about_it = Candidate("a", bm25=5.0, states_time=False, timestamp=NOW)
    weights = RankingWeights(time=1.0, recency=0.0)
    ranked = fuse([about_it, says_when], weights, now=NOW, half_life_days=30, query_asks_when=True)
    assert [c.id for c in ranked] == ["w", "a"]
    # a question that does not ask when: the time feature stays 0, the newer one wins the tie
    ranked = fuse([about_it, says_when], weights, now=NOW, half_life_days=30)
    assert [c.id for c in ranked] == ["a", "w"]
    # scaled by the turn's own evidence: a turn that matches nothing gains nothing from saying when
    nothing = Candidate("n", bm25=0.0, states_time=True, timestamp=NOW)
    rows = candidate_features([says_when, nothing], now=NOW, half_life_days=30, query_asks_when=True)
    time_column = FEATURES.index("time")
    assert rows[0][time_column] == 1.0 and rows[1][time_column] == 0.0


def test_time_is_a_learned_weight_with_an_ablation() -> None:
    assert RankingWeights().time > 0 and RankingWeights.learned(embedder=True).time > 0
    assert ABLATIONS["time"] == {"time": 0.0}
    assert "time" in learned_weights()["lexical"] and "time" in learned_weights()["embedder"]


def test_without_speaker_names_replaces_whole_names_only() -> None:
    speakers = ["Caroline", "Melanie Lee"]
    assert without_speaker_names("When did Caroline go to Melanie's party?", speakers) == (
        "When did they go to their party?"
    )
    assert without_speaker_names("What does MELANIE LEE paint?", speakers) == "What does they paint?"
    assert without_speaker_names("What did Melanie\u2019s son say?", speakers) == "What did their son say?"
    # whole words only, roles are not names, a query of names alone stays, no speakers: unchanged
    assert without_speaker_names("Carolines and Carol", speakers) == "Carolines and Carol"
    assert without_speaker_names("What did the user ask?", ["user", "assistant"]) == "What did the user ask?"
    assert without_speaker_names("Caroline's", speakers) == "Caroline's"
    assert without_speaker_names("Where is Lisbon?", []) == "Where is Lisbon?"


def test_the_vector_query_without_speakers_is_a_switch_with_an_ablation() -> None:
    assert RankingWeights().vector_query_without_speakers
    assert ABLATIONS["vector query without speakers"] == {"vector_query_without_speakers": False}


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("vector", -1.0, "a finite weight >= 0"),
        ("bm25", math.nan, "a finite weight >= 0"),
        ("recency", math.inf, "a finite weight >= 0"),
        ("importance", True, "a finite weight >= 0"),
        ("speaker", "0.5", "a finite weight >= 0"),
        ("speaker_boost", 1, "True or False"),
        ("candidates", 0, "an integer >= 1"),
        ("candidates", 2.5, "an integer >= 1"),
        ("feedback_terms", -1, "an integer >= 0"),
        ("common_term_ratio", 0.0, "a share in (0, 1]"),
        ("common_term_ratio", 1.5, "a share in (0, 1]"),
        ("recency_half_life_days", 0, "None (the config's) or a number of days > 0"),
        ("recency_half_life_days", 10**400, "None (the config's) or a number of days > 0"),
        ("recency", 10**400, "a finite weight >= 0"),
        ("columns", {"content": 1.0}, "a ColumnWeights"),
    ],
)
def test_bad_ranking_weights_are_refused_with_what_is_allowed(
    field: str, value: object, allowed: str
) -> None:
    """Before, RankingWeights(vector=-1, candidates=0) was accepted: a negative weight ranks a feature's best
    matches last, and candidates=0 makes every search return nothing."""
    from context_manager.core.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match=f"^{field}: got .*; allowed {re.escape(allowed)}"):
        RankingWeights(**{field: value})  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        RankingWeights().with_changes(**{field: value})
    assert RankingWeights(vector=0.0, candidates=1, common_term_ratio=1.0, recency_half_life_days=0.5)
