"""The words CLIP chooses from: the vocabulary, the prompt templates, and the user's query.

No torch here: the plugin's documentation and the parameter checks can use it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from changeclip.errors import InputError
from changeclip.model.prompts import RS_CLASSES

TEMPLATES: tuple[str, ...] = (
    "a satellite image of {}.",
    "an aerial photograph of {}.",
    "a remote sensing image of {}.",
    "an overhead view of {}.",
)
"""Prompt templates; a name's text embedding is the normalised mean of its templates' embeddings.

Ensembling a few phrasings is the standard CLIP zero-shot recipe (Radford et al. 2021 §3.1.4)
and makes the score less sensitive to one wording; these four name the overhead viewpoint, which
suits aerial and satellite crops better than CLIP's default "a photo of a {}."."""

INCLUDE_DEFAULT = "@default"
"""A line in a vocabulary file that includes the 56 default names (to extend rather than replace)."""

MAX_NAME_CHARS = 200


@dataclass(frozen=True)
class Vocabulary:
    """Names CLIP chooses between, and where they came from (for summary.json)."""

    names: tuple[str, ...]
    source: str

    def index(self, name: str) -> int | None:
        """Position of ``name`` (case- and space-insensitive), or None."""
        key = _key(name)
        for i, n in enumerate(self.names):
            if _key(n) == key:
                return i
        return None


def _key(name: str) -> str:
    return " ".join(name.lower().split())


def default_vocabulary() -> Vocabulary:
    """The 56 remote-sensing class names of the official tagger."""
    return Vocabulary(tuple(RS_CLASSES), "default (56 remote-sensing classes of the ChangeCLIP tagger)")


def load_vocabulary(path: str | Path | None) -> Vocabulary:
    """The default vocabulary, or the names of a UTF-8 text file (one per line).

    Blank lines and lines starting with ``#`` are skipped; a line ``@default`` adds the 56
    default names at that place (a file with ``@default`` and a few more names *extends* the
    vocabulary; one without it *replaces* it). Duplicates are dropped, first kept.

    Raises:
        InputError: unreadable file, not UTF-8, fewer than two names, or a name too long.
    """
    if path is None:
        return default_vocabulary()
    p = Path(path)
    if not p.is_file():
        raise InputError(f"vocabulary file {p} does not exist or is not a regular file; give a UTF-8 text "
                         "file with one class name per line")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"vocabulary file {p} is not UTF-8 text; save it as UTF-8, one class name per line") from None
    except OSError as exc:
        raise InputError(f"vocabulary file {p} cannot be read ({exc.strerror or exc})") from None
    names: list[str] = []
    seen: set[str] = set()

    def add(name: str) -> None:
        if _key(name) not in seen:
            seen.add(_key(name))
            names.append(name)

    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line == INCLUDE_DEFAULT:
            for n in RS_CLASSES:
                add(n)
            continue
        if len(line) > MAX_NAME_CHARS:
            raise InputError(f"vocabulary file {p}, line {number}: a class name of {len(line)} characters; "
                             f"keep names short (at most {MAX_NAME_CHARS}), one per line")
        add(" ".join(line.split()))
    if len(names) < 2:
        raise InputError(f"vocabulary file {p} holds {len(names)} class name(s); CLIP chooses between names, so "
                         f"give at least two (one per line), or a line {INCLUDE_DEFAULT} to include the 56 defaults")
    return Vocabulary(tuple(names), f"file {p} ({len(names)} names)")


_TRANSITION = re.compile(r"^\s*(?:from\s+)?(?P<before>.+?)\s*(?:→|->|=>|\bto\b|\binto\b)\s*(?P<after>.+?)\s*$",
                         re.IGNORECASE)


_DANGLING = re.compile(r"^(?:to|into|→|->|=>)(?:\s|$)|^from(?:\s+(?:to|into)\b|$)|(?:^|\s)(?:to|into|→|->|=>)$",
                       re.IGNORECASE)


@dataclass(frozen=True)
class Query:
    """A user's query: words (what the after date shows) or a transition (before → after)."""

    text: str
    after: str
    before: str | None = None

    @property
    def kind(self) -> str:
        """``"transition"`` or ``"words"``."""
        return "transition" if self.before is not None else "words"

    def to_dict(self) -> dict[str, str | None]:
        """JSON-able description (for summary.json)."""
        return {"text": self.text, "kind": self.kind, "before": self.before, "after": self.after}


def parse_query(text: str) -> Query:
    """Parse ``"building"``, ``"new buildings"``, ``"farmland to building"``, ``"from forest to bare land"``
    or ``"farmland → building"`` (also ``->``, ``into``).

    Raises:
        InputError: empty query, or a transition with an empty side.
    """
    if not isinstance(text, str) or not text.strip():
        raise InputError("the query is empty; give words such as 'building', or a transition such as "
                         "'farmland to building'")
    clean = " ".join(text.split())
    if _DANGLING.search(clean):
        raise InputError(f"the query {text!r} reads as a transition but one side is empty; write it as "
                         "'farmland to building' (before to after)")
    m = _TRANSITION.match(clean)
    if m is None:
        return Query(clean, clean)
    before, after = m.group("before").strip(), m.group("after").strip()
    if before.lower() == "from":
        before = ""
    if not before or not after:
        raise InputError(f"the query {text!r} reads as a transition but one side is empty; write it as "
                         "'farmland to building' (before to after)")
    return Query(clean, after, before)
