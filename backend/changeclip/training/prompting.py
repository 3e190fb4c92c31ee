"""Prompts while training: constant prompts (``none``/``words``) or each date's own tags (``auto``).

The official training gives each date the prompts built from *its own* tags (``jsonA`` for A,
``jsonB`` for B), unlike its test-time code (spec §1.3-1), and so does this trainer, in training
and in validation. In ``auto`` mode the tagger runs once per tile on the un-augmented images
(as the official offline tagging does) and the tags are cached in ``RUN_DIR/tags.json``; a
resumed run reuses them. The text encoder is trained, so its outputs are recomputed at every
step (for the distinct prompts of the micro-batch only).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from changeclip.errors import InputError
from changeclip.model.prompts import build_prompts, count_tokens, tokenize
from changeclip.training.data import TileRef, read_image

log = logging.getLogger(__name__)


def pixel_key(image: np.ndarray | torch.Tensor) -> str:
    """Hash of a (3, H, W) 0..255 image's 8-bit pixels: finds a tile's tags from its pixels."""
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    return hashlib.sha1(np.ascontiguousarray(np.rint(arr).astype(np.uint8)).tobytes()).hexdigest()


def compute_tags(tiles: Sequence[TileRef], tagger: Any, batch: int = 16,
                 progress: Callable[[int, int], None] | None = None) -> dict[str, dict[str, Any]]:
    """The tagger's top-9 tags of both dates of every tile.

    Returns:
        ``{tile key: {"A": [...], "B": [...], "hA": pixel hash, "hB": pixel hash}}``.
    """
    out: dict[str, dict[str, Any]] = {}
    for i in range(0, len(tiles), batch):
        chunk = tiles[i:i + batch]
        a = np.stack([read_image(t.before) for t in chunk])
        b = np.stack([read_image(t.after) for t in chunk])
        tags_a, tags_b = tagger.tag(a), tagger.tag(b)
        for t, ia, ib, ta, tb in zip(chunk, a, b, tags_a, tags_b, strict=True):
            out[t.key] = {"A": list(ta), "B": list(tb), "hA": pixel_key(ia), "hB": pixel_key(ib)}
        if progress is not None:
            progress(min(i + batch, len(tiles)), len(tiles))
    return out


class TrainPrompts:
    """Text side of a training step.

    Args:
        mode: ``none``, ``words`` or ``auto``.
        words: user words appended to the foreground prompt.
        tags: ``auto`` mode: output of :func:`compute_tags` for every train and val tile.
        prompt_length: the network's prompt token length (64).
    """

    def __init__(self, mode: str, words: str = "", tags: dict[str, dict[str, Any]] | None = None,
                 prompt_length: int = 64) -> None:
        self.mode = mode
        self.words = " ".join((words or "").split())
        self.tags = tags or {}
        self.prompt_length = prompt_length
        if mode == "auto" and not self.tags:
            raise InputError("prompt mode auto needs the tiles' tags")
        longest = max((len(", ".join(v["A"] + v["B"])) for v in self.tags.values()), default=0)
        if mode == "auto":
            worst = max(self.tags.values(), key=lambda v: sum(count_tokens(t) for t in v["A"] + v["B"]))
            for date in ("A", "B"):
                tokenize(list(build_prompts(worst[date], self.words)), prompt_length)
        else:
            tokenize(list(build_prompts([], self.words)), prompt_length)
        log.debug("prompts: mode %s, %d tagged tiles, longest tag list %d chars", mode, len(self.tags), longest)

    def pairs(self, keys: Sequence[str]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """(background, foreground) prompts of date A and date B for the tiles ``keys``."""
        if self.mode != "auto":
            pair = build_prompts([], self.words)
            return [pair] * len(keys), [pair] * len(keys)
        return ([build_prompts(self.tags[k]["A"], self.words) for k in keys],
                [build_prompts(self.tags[k]["B"], self.words) for k in keys])

    def tokens(self, keys: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Token ids of the distinct prompts of a micro-batch and where each tile's prompts are.

        Returns:
            ``(tokens (U, prompt_length), index_a (B, 2), index_b (B, 2))``; the indices are None
            for constant prompts (``tokens`` then holds the one background/foreground pair).
        """
        pa, pb = self.pairs(keys)
        if self.mode != "auto":
            return tokenize(list(pa[0]), self.prompt_length), None, None
        flat = [p for pair in pa + pb for p in pair]
        unique = list(dict.fromkeys(flat))
        where = {p: i for i, p in enumerate(unique)}
        index = torch.tensor([where[p] for p in flat], dtype=torch.long).view(2, len(keys), 2)
        return tokenize(unique, self.prompt_length), index[0], index[1]


class CachedTagger:
    """A tagger for the predictor that answers from the tag cache (validation in ``auto`` mode).

    :class:`~changeclip.inference.predictor.ChangeCLIPPredictor` asks a tagger for the tags of the
    image batches it processes; this one finds each image by its pixel hash, so validation uses
    the detect/eval code path with each date's own cached tags.
    """

    def __init__(self, tags: dict[str, dict[str, Any]], source: str = "") -> None:
        self._by_hash: dict[str, list[str]] = {}
        for v in tags.values():
            self._by_hash[v["hA"]] = v["A"]
            self._by_hash[v["hB"]] = v["B"]
        self.source = source

    def tag(self, images: np.ndarray | torch.Tensor) -> list[list[str]]:
        """Cached tags of each (3, H, W) image of the batch."""
        out = []
        for img in images:
            key = pixel_key(img)
            if key not in self._by_hash:
                raise InputError("internal error: a validation tile has no cached tags; delete tags.json in "
                                 "RUN_DIR to tag the tiles again")
            out.append(self._by_hash[key])
        return out

    def describe(self) -> dict[str, Any]:
        """For the predictor's description."""
        return {"kind": "cached tags", "source": self.source, "images": len(self._by_hash)}


def load_tagger(weights: str | Path, device: str) -> Any:
    """The CLIP tagger (:class:`changeclip.model.tagger.Tagger`) from a local file."""
    from changeclip.model.tagger import Tagger

    return Tagger(weights, device=device)
