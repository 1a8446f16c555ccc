"""Near-duplicate detection for consolidation (pure functions).

Two memories of one user are near-duplicates when

* their word sets are similar (Jaccard similarity at least the threshold), or, with an embedder,
  their vectors are (cosine at least the semantic threshold), **and**
* they name the same identifiers: every number, code, e-mail address, web address, name and symbol
  (an emoji: "rated 👍" / "rated 👎") in one of them is in the other (:func:`identifiers`). "My account
  is 12345678" and "My account is 12345679" are one word apart and mean different things; merging them
  would hide one; **and**
* they say it the same way where a word decides the meaning (:func:`meaning_markers`): the same
  negations ("is allergic" / "is not allergic"), number words ("one nine" / "one eight"), times and days
  ("today" / "tomorrow"), and, when an order word relates two things ("backup before deploy" /
  "deploy before backup"), the words they share in the same order.

A group is merged only when *every* pair in it is a near-duplicate (complete linkage): A like B and
B like C does not merge A with C unless A is like C too. Pairs are joined best first, so each memory
lands with the memories it is most like.
"""

from __future__ import annotations

import heapq
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from typing import NamedTuple

from context_manager.core.memory.index import query_tokens
from context_manager.core.memory.models import Memory

__all__ = [
    "identifiers",
    "meaning_markers",
    "near_duplicate_groups",
    "same_identifiers",
    "same_meaning_markers",
]

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_EMAIL_AT_RUN_START = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
""":data:`_EMAIL` tried only where a run of its local part's characters starts (see :func:`_emails`)."""
_URL = re.compile(r"(?:https?://|www\.)[^\s<>\"']+", re.IGNORECASE)
_STRIP = "\"'`“”‘’()[]{}<>«»,;:!?.…*_~"
_CLOSING = "\"'”’)]}»"
_SENTENCE_END = (".", "!", "?", ":", ";")
_DIGIT_GROUPS = re.compile(r"(?<=\d)[,'’ _](?=\d{3}\b)")

# Words that start sentences with a capital without being names (checked in lower case).
_COMMON_STARTS_TEXT = """
    a about above after again against all also although always am an and another any anyway are as at
    be because been before being below besides between both but by can cannot could did do does doing
    done during each either else even ever every few first for from further had has have having he her
    here hers him his how however i if in into is it its just last later least less let lets let's like
    maybe me meanwhile might more most much must my never next no nobody none nor not note nothing now
    of off ok okay on once one only or other otherwise our ours out over perhaps please plus rather
    really regarding remember same she should since so some someone something sometimes soon still such
    than thank thanks that the their theirs them then there therefore these they this those though
    through thus to today tomorrow tonight too under unless until up upon us usually very was we well
    were what whatever when whenever where whereas whether which while who whoever whom whose why will
    with within without would yes yesterday yet you your yours hi hello hey dear user assistant system
"""
_COMMON_STARTS = frozenset(_COMMON_STARTS_TEXT.split())


def identifiers(text: str) -> frozenset[str]:
    """The identifiers a text names, in lower case: numbers, codes, e-mail and web addresses, names.

    * a word with a digit (``12345678``, ``10:30``, ``v3.11``, ``AB-1234``; digit groups are joined,
      so ``1,200`` is ``1200``);
    * an e-mail address or a web address;
    * a code: a word with a capital after its first letter (``ACME``, ``EU-WEST``, ``iPhone``);
    * a name: a capitalised word inside a sentence, or starting one unless it is a common word
      (``Alice prefers ...`` names Alice; ``The report ...`` names nothing);
    * a symbol as search finds it (``query_tokens``: an emoji, skin tones left out; a flag; ``✓``).

    The whole text counts, however long; each distinct word is looked at once, so a text of megabytes
    costs little more than splitting it.
    """
    found: set[str] = set()
    if not text.isascii():  # ASCII holds no symbol
        found.update(token for token in _tokens(text) if _is_symbol_token(token))
    raws: list[str] = []
    distinct: set[str] = set()
    for piece in _pieces(text):
        for finder in (_emails, _urls):
            spans = []
            for match in finder(piece):
                found.add(match.group(0).rstrip(_STRIP).lower())
                spans.append(match.span())
            piece = _blank(piece, spans)
        piece_raws = _DIGIT_GROUPS.sub("", piece).split()
        raws += piece_raws
        distinct.update(piece_raws)
    sentence_starts: dict[str, str] = {}  # a capitalised common word -> lower case: a name mid-sentence
    for raw in distinct:
        word = raw.strip(_STRIP)
        if not word:
            continue
        lower = word.lower()
        if lower == "i" or lower.startswith(("i'", "i’")):
            continue  # the pronoun, however capitalised
        if (
            not (word.isalpha() and (len(word) == 1 or word[1:].islower()))
            and (  # letters, no capital inside
                any(character.isdigit() for character in word) or any(c.isupper() for c in word[1:])
            )
        ):
            found.add(lower)  # a number, a time, a version, a code
        elif word[0].isupper():
            if lower in _COMMON_STARTS:
                sentence_starts[raw] = lower
            else:
                found.add(lower)  # a name
    if sentence_starts:  # a name where the word before it does not end a sentence
        for previous, raw in zip(raws, islice(raws, 1, None), strict=False):
            if raw in sentence_starts and not previous.rstrip(_CLOSING).endswith(_SENTENCE_END):
                found.add(sentence_starts.pop(raw))
                if not sentence_starts:
                    break
    return frozenset(found)


def _emails(text: str) -> Iterator[re.Match[str]]:
    """What ``_EMAIL.finditer(text)`` finds, in time linear in the text's length.

    ``finditer`` tries a match at every character of a run of letters, digits and ``.+-_``, and each try
    reads the rest of the run: a run of a million letters or digits without a space (a hex dump, a minified
    file) took hours. The leftmost match starts where a run starts, or right where the previous match ended
    (a run it ended inside of), and nowhere else.
    """
    if "@" not in text:
        return
    match = _EMAIL_AT_RUN_START.search(text)
    while match is not None:
        yield match
        end = match.end()
        match = _EMAIL.match(text, end) or _EMAIL_AT_RUN_START.search(text, end)


def _urls(text: str) -> Iterator[re.Match[str]]:
    """``_URL.finditer(text)``, not run over a text that names no web address (most do not)."""
    if "://" in text or "www." in text.lower():
        yield from _URL.finditer(text)


def _blank(text: str, spans: Sequence[tuple[int, int]]) -> str:
    """``text`` with each span replaced by a space (what ``pattern.sub(" ", text)`` does for its matches)."""
    if not spans:
        return text
    parts = []
    position = 0
    for start, end in spans:
        parts.append(text[position:start])
        position = end
    parts.append(text[position:])
    return " ".join(parts)


def _tokens(text: str, *, digit_groups: bool = False) -> frozenset[str]:
    """The distinct ``query_tokens(text, symbols=True)`` of the whole text, however long.

    No token spans white space (nor does case folding join across it), so each distinct run between
    white space is tokenised once: a text of megabytes repeats most of its words. With ``digit_groups``,
    of the text with its digit groups joined (``1,200`` is ``1200``).
    """
    distinct: set[str] = set()
    for piece in _pieces(text):
        distinct.update((_DIGIT_GROUPS.sub("", piece) if digit_groups else piece).split())
    runs = list(distinct)
    tokens: set[str] = set()
    for start in range(0, len(runs), _PIECE_RUNS):
        batch = " ".join(runs[start : start + _PIECE_RUNS])
        tokens.update(query_tokens(batch, limit=sys.maxsize, symbols=True))
    return frozenset(tokens)


_PIECE_CHARACTERS = 1 << 16
"""A long text is read a piece of about this many characters at a time (:func:`_pieces`)."""
_PIECE_RUNS = 10_000
"""Distinct runs between white space tokenised per ``query_tokens`` call."""
_CUT = re.compile(r"(?<!\d)\s")
"""Where a piece may end: after white space that follows no digit (no digit group spans it)."""


def _pieces(text: str) -> Iterator[str]:
    """``text`` in pieces of about :data:`_PIECE_CHARACTERS`, each ending after white space after no digit.

    A regex or ``split`` call holds the interpreter lock for all of its text (100-150 ms over 5 MB): the
    event loop could not run while a thread consolidated memories of megabytes. No word, address, token
    or digit group (``1 200``) spans such a cut, and case folding does not look across it, so reading the
    pieces one by one finds what reading the whole text does. A text without such white space is one piece.
    """
    start, length = 0, len(text)
    while length - start > _PIECE_CHARACTERS:
        cut = _CUT.search(text, start + _PIECE_CHARACTERS)
        if cut is None:
            break
        yield text[start : cut.end()]
        start = cut.end()
    yield text[start:]


def _is_symbol_token(token: str) -> bool:
    """Whether a ``query_tokens(..., symbols=True)`` token is a symbol (a word starts alphanumeric)."""
    return not token[0].isalnum()


_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
_NEGATIONS = frozenset(
    """not no never none nobody nothing nowhere neither nor without cannot cant dont doesnt didnt isnt arent
    wasnt werent wont wouldnt shouldnt couldnt hasnt havent hadnt mustnt""".split()  # noqa: SIM905
)
_NUMBER_WORDS = frozenset(
    # not "one": mostly a pronoun ("the one I like")
    """zero two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen
    sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred
    thousand million billion trillion half quarter dozen once twice thrice first second third fourth fifth
    sixth seventh eighth ninth tenth last""".split()  # noqa: SIM905
)
_TIME_WORDS = frozenset(
    """today tomorrow yesterday tonight morning afternoon evening night noon midnight now later earlier
    soon early late next daily weekly monthly yearly annually hourly weekend weekday monday tuesday wednesday
    thursday friday saturday sunday january february march april may june july august september october
    november december spring summer autumn fall winter am pm""".split()  # noqa: SIM905
)
_ORDER_WORDS = frozenset("before after than instead rather versus vs".split())  # noqa: SIM905


_Relations = tuple[tuple[str, str | None, str | None], ...]


class Markers(NamedTuple):
    """What :func:`meaning_markers` finds in a text."""

    negations: int
    """How many negations it holds (``not``, ``never``, ``isn't`` ...)."""
    numbers: tuple[str, ...]
    """Its number words, sorted."""
    times: frozenset[str]
    """Its time words."""
    relations: _Relations
    """Each order word with the nearest content word before and after it (``None``: none), in text order."""


def meaning_markers(text: str) -> Markers:
    """The words of ``text`` one of which, changed, changes what it says.

    An order word (``before``, ``than``, ``instead`` ...) relates the content words next to it ("backup
    before deploy"): those neighbours are part of what the text says.

    The cost is linear in the length of the text, however many order words it holds.
    """
    # an apostrophe inside a word is dropped ("isn't" is "isnt"), as if each word were cleaned after the split
    words: list[str] = []
    counts: Counter[str] = Counter()
    for piece in _pieces(text):
        piece_words = _WORD.findall(_INNER_APOSTROPHE.sub("", piece.lower()))
        words += piece_words
        counts.update(piece_words)
    relations = []
    if any(word in counts for word in _ORDER_WORDS):
        positions = sorted(
            position
            for word in _ORDER_WORDS
            if word in counts
            for position in _positions(words, word, counts[word])
        )
        befores = _content_neighbours(words, positions, step=-1)
        afters = _content_neighbours(words, positions[::-1], step=1)[::-1]
        relations = [
            (words[position], before, after)
            for position, before, after in zip(positions, befores, afters, strict=True)
        ]
    return Markers(
        sum(counts[word] for word in _NEGATIONS),
        tuple(sorted(word for word in _NUMBER_WORDS for _ in range(counts[word]))),
        frozenset(word for word in _TIME_WORDS if word in counts),
        tuple(relations),
    )


_INNER_APOSTROPHE = re.compile(r"['’](?<=[^\W_]['’])(?=[^\W_])")  # the apostrophe first: a fast scan
"""An apostrophe :data:`_WORD` takes into a word (between two of its letters)."""


def _positions(words: list[str], word: str, count: int) -> Iterator[int]:
    """Where ``word`` is in ``words`` (found ``count`` times: ``list.index`` scans, no loop in Python)."""
    position = -1
    for _ in range(count):
        position = words.index(word, position + 1)
        yield position


def _content_neighbours(words: list[str], positions: Sequence[int], step: int) -> list[str | None]:
    """For each position, the nearest word not in :data:`_COMMON_STARTS` before it (``step`` -1) or after (1).

    ``positions`` run in the direction opposite to ``step`` (ascending for -1), so each search stops at
    the previous position and takes its answer from there: every word is read once at most.
    """
    found: list[str | None] = []
    limit = -1 if step < 0 else len(words)
    for index, position in enumerate(positions):
        stop = positions[index - 1] if index else limit
        neighbour: str | None = None
        for other in range(position + step, stop, step):
            if words[other] not in _COMMON_STARTS:
                neighbour = words[other]
                break
        else:
            if index:
                neighbour = words[stop] if words[stop] not in _COMMON_STARTS else found[-1]
        found.append(neighbour)
    return found


def same_meaning_markers(first: Markers, second: Markers) -> bool:
    """Whether two texts' :func:`meaning_markers` agree.

    They agree with as many negations ("is allergic ... never pack them" and "is not allergic ... never
    pack them" do not), the same number words ("one nine" / "one nine five" do not), time words of which
    one text's are among the other's (a detail added, "Monday" / "Monday morning", agrees; "today" /
    "tomorrow" does not) and the same content words on either side of each order word ("the backup job runs
    before the deploy job" / "the deploy job runs before the backup job" do not).
    """
    return (
        first.negations == second.negations
        and first.numbers == second.numbers
        and (first.times <= second.times or second.times <= first.times)
        and _same_relations(first.relations, second.relations)
    )


def _same_relations(first: _Relations, second: _Relations) -> bool:
    """The same order words, each joining the same neighbours where both texts have one on that side.

    "Before the weekly deploy, back up the database" has no word before "before": its neighbour after it
    ("deploy") is compared, with "back up the database before the weekly deploy".
    """
    if sorted(word for word, _, _ in first) != sorted(word for word, _, _ in second):
        return False
    for order_word in {word for word, _, _ in first}:
        ours = [(before, after) for word, before, after in first if word == order_word]
        theirs = [(before, after) for word, before, after in second if word == order_word]
        for (before, after), (other_before, other_after) in zip(ours, theirs, strict=True):
            if None not in (before, other_before) and before != other_before:
                return False
            if None not in (after, other_after) and after != other_after:
                return False
    return True


def same_identifiers(
    first: frozenset[str], first_words: frozenset[str], second: frozenset[str], second_words: frozenset[str]
) -> bool:
    """Whether every identifier of each text is in the other (as an identifier, or as a plain word).

    ``first_words``/``second_words`` are the texts' lower-case words: "Monday" in one text and
    "monday" in the other name the same day.
    """
    return all(item in second or item in second_words for item in first) and all(
        item in first or item in first_words for item in second
    )


def near_duplicate_groups(
    memories: Sequence[Memory],
    threshold: float,
    cosine: Callable[[str, str], float | None] | None,
    semantic_threshold: float,
) -> list[list[Memory]]:
    """Groups of near-duplicates (see the module docstring), each of two memories or more, one user each.

    Candidate pairs share one of the rarer words of a memory, so the work stays near-linear.
    """
    unique: dict[str, Memory] = {}
    for memory in memories:
        unique.setdefault(memory.id, memory)
    items = list(unique.values())
    words = [_tokens(memory.content, digit_groups=True) for memory in items]
    names = [identifiers(memory.content) for memory in items]
    markers = [meaning_markers(memory.content) for memory in items]
    postings: dict[tuple[str | None, str], list[int]] = {}
    for position, (memory, word_set) in enumerate(zip(items, words, strict=True)):
        for word in word_set:
            postings.setdefault((memory.user_id, word), []).append(position)

    similar: dict[tuple[int, int], float] = {}
    for position, (memory, word_set) in enumerate(zip(items, words, strict=True)):
        if not word_set:
            continue
        rarest = heapq.nsmallest(3, word_set, key=lambda w: (len(postings[(memory.user_id, w)]), w))
        partners: set[int] = set()
        for word in rarest:
            partners.update(postings[(memory.user_id, word)][:200])
        for other in partners:
            if other <= position:
                continue
            other_words = words[other]
            shared = len(word_set & other_words)
            score = shared / (len(word_set) + len(other_words) - shared) if other_words else 0.0
            if score < threshold:
                value = cosine(memory.id, items[other].id) if cosine is not None else None
                if value is None or value < semantic_threshold:
                    continue
                score = value
            if not same_identifiers(names[position], word_set, names[other], other_words):
                continue
            if not same_meaning_markers(markers[position], markers[other]):
                continue
            similar[(position, other)] = score

    def alike(first: int, second: int) -> bool:
        return (min(first, second), max(first, second)) in similar

    group_of: dict[int, list[int]] = {}
    for (first, second), _ in sorted(similar.items(), key=lambda pair: (-pair[1], pair[0])):
        first_group, second_group = group_of.get(first, [first]), group_of.get(second, [second])
        if first_group is second_group:
            continue
        if all(alike(a, b) for a in first_group for b in second_group):  # complete linkage
            joined = first_group + second_group
            for member in joined:
                group_of[member] = joined
    groups = sorted({id(group): sorted(group) for group in group_of.values()}.values())
    return [[items[position] for position in group] for group in groups]
