"""Long real conversations in the LoCoMo format, and the evidence-recall metrics measured on them.

The format (``data/locomo10.json`` of the public LoCoMo benchmark, github.com/snap-research/locomo, CC BY-NC
4.0; the project does not ship it): a JSON list of conversations, each with ``conversation`` (``speaker_a``,
``speaker_b``, ``session_N`` lists of turns ``{"speaker", "dia_id": "D<session>:<turn>", "text"}`` and their
``session_N_date_time``) and ``qa`` (``{"question", "evidence": ["D1:3", ...], "category"}``). Categories: 1
multi-hop, 2 temporal, 3 open-domain, 4 single-hop, 5 adversarial (no answer in the conversation: skipped).

Metrics per question (``evidence`` = the question's evidence turns present in the conversation):

* Recall@k: the share of the evidence turns in the top k;
* reciprocal rank of the first evidence turn found (0 when none is in the top 10);
* nDCG@10 with binary gains.

A turn is stored as its text, with the image caption appended when the turn shared a photo (``[shares a
photo: <caption>]``: what an application that describes images would keep); both the library and the raw
FTS5 baseline index the same text.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = [
    "CATEGORY_NAMES",
    "Conversation",
    "LocomoQuestion",
    "LocomoTurn",
    "QuestionScore",
    "load_locomo",
    "score_ranking",
]

CATEGORY_NAMES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}
"""LoCoMo's question categories."""

_DIA_ID = re.compile(r"D(\d+):(\d+)")
_SESSION_KEY = re.compile(r"session_(\d+)$")


@dataclass(frozen=True, slots=True)
class LocomoTurn:
    """One turn of a conversation."""

    key: str
    """``D<session>:<turn>`` (LoCoMo's ``dia_id``)."""
    session: int
    """Session number (1-based)."""
    turn_index: int
    """Position within the session (0-based)."""
    speaker: str
    """Who said it."""
    text: str
    """What was said (with the shared photo's caption, if any)."""
    session_date: str
    """The session's date and time, ISO 8601 (``2023-05-08T13:56:00``)."""

    def metadata(self, sample_id: str) -> dict[str, Any]:
        """Conversation metadata as an application would attach it to the memory of this turn."""
        return {
            "session_id": f"{sample_id}/session_{self.session}",
            "turn_index": self.turn_index,
            "speaker": self.speaker,
            "session_date": self.session_date,
        }


@dataclass(frozen=True, slots=True)
class LocomoQuestion:
    """A question with the turns that hold its answer."""

    text: str
    """The question as asked."""
    evidence: tuple[str, ...]
    """Keys of the evidence turns (only those present in the conversation)."""
    category: int
    """LoCoMo category (1-4; adversarial questions are skipped)."""


@dataclass(slots=True)
class Conversation:
    """One long multi-session conversation and its questions."""

    sample_id: str
    """The conversation's id (``conv-26``)."""
    speakers: tuple[str, str]
    """The two speakers."""
    turns: list[LocomoTurn] = field(default_factory=list)
    """Every turn, in order."""
    questions: list[LocomoQuestion] = field(default_factory=list)
    """The answerable questions with at least one evidence turn."""

    @property
    def last_date(self) -> str:
        """The date of the last session."""
        return max(turn.session_date for turn in self.turns)


def parse_locomo_date(text: str) -> str:
    """``"1:56 pm on 8 May, 2023"`` -> ``"2023-05-08T13:56:00"``."""
    cleaned = " ".join(text.replace(",", " ").split())
    for pattern in ("%I:%M %p on %d %B %Y", "%I:%M %p on %d %b %Y"):
        try:
            return datetime.strptime(cleaned, pattern).isoformat()
        except ValueError:
            continue
    raise ValueError(f"unrecognised LoCoMo session date: {text!r}")


def _evidence_keys(raw: Sequence[Any]) -> list[str]:
    """Normalise evidence entries (a few are ``"D8:6; D9:17"`` or ``"D:11:26"``)."""
    keys: list[str] = []
    for entry in raw:
        text = str(entry).replace("D:", "D")
        keys.extend(f"D{s}:{t}" for s, t in _DIA_ID.findall(text))
    return keys


def load_locomo(path: Path | str, *, limit: int | None = None) -> list[Conversation]:
    """Read conversations in the LoCoMo format (the first ``limit`` of them when given)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of conversations")
    conversations = []
    for position, item in enumerate(data[:limit] if limit else data):
        body = item["conversation"]
        sample_id = str(item.get("sample_id") or f"conversation-{position + 1}")
        conversation = Conversation(sample_id, (str(body["speaker_a"]), str(body["speaker_b"])))
        sessions = sorted(
            (int(found.group(1)), value)
            for key, value in body.items()
            if (found := _SESSION_KEY.match(key)) and isinstance(value, list)
        )
        for number, turns in sessions:
            date = parse_locomo_date(str(body[f"session_{number}_date_time"]))
            for index, turn in enumerate(turns):
                text = str(turn["text"])
                caption = turn.get("blip_caption")
                if caption:
                    text = f"{text} [shares a photo: {caption}]"
                conversation.turns.append(
                    LocomoTurn(str(turn["dia_id"]), number, index, str(turn["speaker"]), text, date)
                )
        present = {turn.key for turn in conversation.turns}
        for qa in item.get("qa", []):
            category = int(qa.get("category", 0))
            if category == 5:
                continue
            evidence = tuple(
                dict.fromkeys(key for key in _evidence_keys(qa.get("evidence", [])) if key in present)
            )
            if evidence:
                conversation.questions.append(LocomoQuestion(str(qa["question"]), evidence, category))
        conversations.append(conversation)
    return conversations


@dataclass(frozen=True, slots=True)
class QuestionScore:
    """The metrics of one question's ranking."""

    recall: dict[int, float]
    """Recall@k for k in (1, 5, 10)."""
    reciprocal_rank: float
    """1 / rank of the first evidence turn (0 when not in the ranking)."""
    ndcg10: float
    """nDCG@10, binary gains."""


def score_ranking(ranked_keys: Sequence[str | None], evidence: Sequence[str]) -> QuestionScore:
    """Score one ranking (turn keys, best first) against the evidence turns."""
    wanted = set(evidence)
    recall = {k: len(wanted.intersection(ranked_keys[:k])) / len(wanted) for k in (1, 5, 10)}
    reciprocal = 0.0
    for position, key in enumerate(ranked_keys[:10], start=1):
        if key in wanted:
            reciprocal = 1.0 / position
            break
    dcg = sum(
        1.0 / math.log2(position + 1)
        for position, key in enumerate(ranked_keys[:10], start=1)
        if key in wanted
    )
    ideal = sum(1.0 / math.log2(position + 1) for position in range(1, min(len(wanted), 10) + 1))
    return QuestionScore(recall, reciprocal, dcg / ideal if ideal else 0.0)
