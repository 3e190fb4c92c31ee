"""Vocabulary files and query parsing (no torch, no CLIP)."""

from __future__ import annotations

from pathlib import Path

import pytest

from changeclip.describe.vocabulary import load_vocabulary, parse_query
from changeclip.errors import InputError
from changeclip.model.prompts import RS_CLASSES


@pytest.mark.parametrize(("text", "kind", "before", "after"), [
    ("building", "words", None, "building"),
    ("  new   buildings ", "words", None, "new buildings"),
    ("farmland to building", "transition", "farmland", "building"),
    ("from forest to bare land", "transition", "forest", "bare land"),
    ("Farmland → Dense Residential", "transition", "Farmland", "Dense Residential"),
    ("meadow -> parking lot", "transition", "meadow", "parking lot"),
    ("forest into farmland", "transition", "forest", "farmland"),
    ("tomato field", "words", None, "tomato field"),
])
def test_queries_parse_as_words_or_transitions(text: str, kind: str, before: str | None, after: str) -> None:
    q = parse_query(text)
    assert (q.kind, q.before, q.after) == (kind, before, after)


@pytest.mark.parametrize("text", ["", "   ", "from to building", "farmland to "])
def test_empty_queries_and_empty_sides_are_refused(text: str) -> None:
    with pytest.raises(InputError, match="query"):
        parse_query(text)


def test_default_vocabulary_is_the_taggers_56_classes() -> None:
    vocab = load_vocabulary(None)
    assert vocab.names == tuple(RS_CLASSES) and len(vocab.names) == 56
    assert vocab.index("Parking  Lot") == RS_CLASSES.index("parking lot")


def test_a_file_replaces_or_with_at_default_extends(tmp_path: Path) -> None:
    own = tmp_path / "own.txt"
    own.write_text("# my classes\ngreenhouse\n\nsolar farm\ngreenhouse\n", encoding="utf-8")
    assert load_vocabulary(own).names == ("greenhouse", "solar farm")
    ext = tmp_path / "ext.txt"
    ext.write_text("@default\ngreenhouse\nbuilding\n", encoding="utf-8")
    names = load_vocabulary(ext).names
    assert names[:56] == tuple(RS_CLASSES) and names[56:] == ("greenhouse",)


@pytest.mark.parametrize(("content", "match"), [
    (b"", "holds 0 class name"),
    (b"# only a comment\n\n", "holds 0 class name"),
    (b"just one\n", "at least two"),
    (b"caf\xe9\nbar\n", "not UTF-8"),
    (b"x" * 300 + b"\nb\n", "line 1"),
])
def test_bad_vocabulary_files_are_refused(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "v.txt"
    path.write_bytes(content)
    with pytest.raises(InputError, match=match):
        load_vocabulary(path)


def test_missing_or_unreadable_vocabulary_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_vocabulary(tmp_path / "nope.txt")
    with pytest.raises(InputError, match="not a regular file"):
        load_vocabulary(tmp_path)
