"""The pinned copy of the user guide (tests/fixtures) is the contract the snippet tests check against."""

from __future__ import annotations

from tests.guide_snippets import GUIDE, PINNED_GUIDE, SHARED_GUIDE


def test_pinned_guide_matches_the_shared_guide() -> None:
    pinned = PINNED_GUIDE.read_text(encoding="utf-8")
    assert pinned.count("```python") >= 25, "the pinned guide lost its code examples"
    if SHARED_GUIDE.is_file():  # next to the shared spec: the copy must not drift from it
        assert pinned == SHARED_GUIDE.read_text(encoding="utf-8"), (
            "tests/fixtures/USER_GUIDE.md differs from the shared guide: copy the shared one over it"
        )
        assert GUIDE == SHARED_GUIDE
    else:
        assert GUIDE == PINNED_GUIDE
