"""From CLIP embeddings to what a polygon was, what it became, and how well it fits a query.

Scores (documented in docs/describe.md):

- **Class of a date**: softmax over the vocabulary of ``scale * cos(image, name)``, where a
  name's embedding is the normalised mean over the prompt templates; the class is the argmax
  and ``*_p`` its probability.
- **Words query** ``q``: the probability of ``q`` in the *after* crop against the vocabulary
  (``q`` is one of the candidates: the vocabulary name itself if it is one, else added as one
  more candidate). "How sure is CLIP that the new state is q rather than any other class."
- **Transition query** ``X → Y``: the geometric mean of ``P_before(X)`` and ``P_after(Y)``, each
  computed as for a words query; high only when both dates agree with the query, and on the
  same 0..1 scale as a words query so one threshold serves both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from changeclip.describe.encoder import ClipEncoder
from changeclip.describe.vocabulary import TEMPLATES, Query, Vocabulary


def name_features(encoder: ClipEncoder, names: Sequence[str], templates: Sequence[str] = TEMPLATES) -> torch.Tensor:
    """Template-ensembled, L2-normalised text embeddings ``(len(names), D)``."""
    texts = [t.format(n) for n in names for t in templates]
    feats = encoder.encode_texts(texts).reshape(len(names), len(templates), -1).mean(dim=1)
    return torch.nn.functional.normalize(feats, dim=-1)


@dataclass
class TextBank:
    """The vocabulary's embeddings and, for a query, the embeddings of its sides."""

    vocabulary: Vocabulary
    features: torch.Tensor
    scale: float
    query: Query | None = None
    query_after: torch.Tensor | None = None
    query_before: torch.Tensor | None = None

    @classmethod
    def build(cls, encoder: ClipEncoder, vocabulary: Vocabulary, query: Query | None,
              templates: Sequence[str] = TEMPLATES) -> TextBank:
        """Embed the vocabulary and the query's sides (checking each fits CLIP's context)."""
        bank = cls(vocabulary, name_features(encoder, vocabulary.names, templates), encoder.logit_scale, query)
        if query is not None:
            bank.query_after = bank._side(encoder, query.after, templates)
            if query.before is not None:
                bank.query_before = bank._side(encoder, query.before, templates)
        return bank

    def _side(self, encoder: ClipEncoder, words: str, templates: Sequence[str]) -> torch.Tensor:
        idx = self.vocabulary.index(words)
        if idx is not None:
            return self.features[idx:idx + 1]
        return name_features(encoder, [words], templates)


@dataclass
class Scores:
    """Per polygon: class index and probability of each date, and the query score (or None)."""

    before_idx: list[int]
    before_p: list[float]
    after_idx: list[int]
    after_p: list[float]
    query_score: list[float] | None


def _probability_of(images: torch.Tensor, bank: TextBank, side: torch.Tensor) -> torch.Tensor:
    """P(side) per image, with ``side`` one candidate among the vocabulary (added if not in it)."""
    in_vocab = any(torch.equal(side[0], row) for row in bank.features)
    cands = bank.features if in_vocab else torch.cat([bank.features, side])
    probs = (bank.scale * images @ cands.t()).softmax(dim=-1)
    if in_vocab:
        col = next(i for i, row in enumerate(bank.features) if torch.equal(side[0], row))
        return probs[:, col]
    return probs[:, -1]


def score(before: torch.Tensor, after: torch.Tensor, bank: TextBank) -> Scores:
    """Score ``(N, D)`` normalised image embeddings of the before and after crops."""
    pb = (bank.scale * before @ bank.features.t()).softmax(dim=-1)
    pa = (bank.scale * after @ bank.features.t()).softmax(dim=-1)
    b_p, b_i = pb.max(dim=-1)
    a_p, a_i = pa.max(dim=-1)
    query: list[float] | None = None
    if bank.query is not None and bank.query_after is not None:
        q = _probability_of(after, bank, bank.query_after)
        if bank.query_before is not None:
            q = torch.sqrt(q * _probability_of(before, bank, bank.query_before))
        query = [float(v) for v in q]
    return Scores([int(v) for v in b_i], [float(v) for v in b_p], [int(v) for v in a_i], [float(v) for v in a_p],
                  query)
