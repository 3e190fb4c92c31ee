"""Prompt text of ChangeCLIP: the tag vocabulary, prompt strings, CLIP BPE tokens, text cache.

The official pipeline gives every image two prompts: a constant background prompt and a
foreground prompt made of a fixed prefix plus the image's top-9 zero-shot tags from a
56-class remote-sensing vocabulary (spec §1.2, §4.1). Prompts are tokenised with CLIP's
byte-pair encoding at a context length of **64**; unlike open_clip's tokenizer, a prompt
that does not fit is an error here, never silently truncated.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import lru_cache

import torch

from changeclip.errors import InputError

log = logging.getLogger(__name__)

RS_CLASSES: tuple[str, ...] = (
    "airport", "bare land", "basketball court", "beach", "bridge", "dense residential",
    "farmland", "forest", "freeway", "ground track field", "harbor", "island", "lake",
    "meadow", "mine", "mountain", "oil tank", "runway", "sea", "solar panel", "stadium",
    "tennis court", "terrace", "wetland", "commercial area", "cotton field",
    "industrial area", "railway", "interchange", "single-family residential", "highway",
    "intersection", "golf course", "desert", "river", "campus", "prairie", "building",
    "fertile land", "park", "parking lot", "square", "road", "tree", "cars", "shrubbery",
    "impermeable surface", "ship", "airplane", "pond", "church", "chaparral",
    "storage tanks", "snow land", "container", "cabin",
)
"""The 56-class remote-sensing vocabulary of the official tagger, in its file order."""

BACKGROUND_PROMPT = "remote sensing image background objects"
"""The constant background prompt (same for every image and both dates)."""

FOREGROUND_PREFIX = "remote sensing image foreground objects"
"""Start of every foreground prompt; tags follow after ", "."""

CONTEXT_LENGTH = 64
"""Token length of a prompt (start + BPE tokens + end, zero padded)."""

TOP_K_TAGS = 9
"""Number of zero-shot tags per image in the official pipeline."""


class PromptTooLong(InputError):
    """A prompt needs more CLIP BPE tokens than the model's prompt context holds."""


def build_prompts(tags: Sequence[str], words: str = "") -> tuple[str, str]:
    """Build the (background, foreground) prompt pair of one image.

    The foreground prompt is ``"remote sensing image foreground objects, " + ", ".join(tags)``,
    with the user's words appended after the tags (joined by ", "). With no tags and no words
    it is the bare prefix, exactly as the official code reduces it when tag files are missing.

    Args:
        tags: Tag words of the image, in order (the tagger's top-9, or empty).
        words: Extra user words appended to the foreground prompt; blank = none.

    Returns:
        ``(background_prompt, foreground_prompt)``.
    """
    parts = [str(t).strip() for t in tags if str(t).strip()]
    extra = " ".join(words.split())
    if extra:
        parts.append(extra)
    fg = FOREGROUND_PREFIX + (", " + ", ".join(parts) if parts else "")
    return BACKGROUND_PROMPT, fg


@lru_cache(maxsize=1)
def _bpe():  # open_clip's SimpleTokenizer, imported lazily (open_clip is slow to import)
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def count_tokens(text: str) -> int:
    """Number of tokens ``text`` takes in a prompt, start and end tokens included."""
    return len(_bpe().encode(text)) + 2


def tokenize(texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH) -> torch.Tensor:
    """Tokenise prompts with CLIP's BPE (the vocabulary bundled with open_clip).

    Same cleaning and vocabulary as OpenAI CLIP's ``tokenize`` (lower-case, whitespace
    collapsed); each row is ``[SOT, tokens..., EOT, 0...]``.

    Args:
        texts: One prompt or a sequence of prompts.
        context_length: Row length; 64 for ChangeCLIP prompts.

    Returns:
        LongTensor (N, context_length) of token ids.

    Raises:
        PromptTooLong: a prompt needs more than ``context_length`` tokens (the message gives
            its token count and the limit).
    """
    if isinstance(texts, str):
        texts = [texts]
    bpe = _bpe()
    out = torch.zeros(len(texts), context_length, dtype=torch.long)
    for i, text in enumerate(texts):
        ids = [bpe.sot_token_id, *bpe.encode(text), bpe.eot_token_id]
        if len(ids) > context_length:
            raise PromptTooLong(
                f"prompt is {len(ids)} tokens long (start and end tokens included) but the model "
                f"accepts at most {context_length}: {text[:120]!r}{'...' if len(text) > 120 else ''}. "
                "Use fewer or shorter prompt words (the 9 automatic tags already take up to ~30 tokens)."
            )
        out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


class TextFeatureCache:
    """Per-process cache of text-encoder outputs, keyed by the prompt string.

    ChangeCLIP's text encoder depends only on the token ids, so its output for a prompt can
    be reused across tiles and runs of the same model. One cache belongs to one model (its
    ``encode_text`` and device); it is a bounded LRU and is thread-safe.

    Args:
        encode_text: The model's ``encode_text``: LongTensor (N, 64) on the model's device ->
            float tensor (N, D).
        device: Device the token ids are moved to.
        max_entries: Bound of the LRU (distinct prompt strings kept).
    """

    def __init__(self, encode_text: Callable[[torch.Tensor], torch.Tensor],
                 device: torch.device | str = "cpu", max_entries: int = 4096) -> None:
        self._encode = encode_text
        self._device = torch.device(device)
        self._max = int(max_entries)
        self._store: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    def get(self, prompts: Sequence[str]) -> torch.Tensor:
        """Text features of ``prompts`` (computed in one batch for the missing ones).

        Args:
            prompts: Prompt strings (may repeat).

        Returns:
            float32 tensor (len(prompts), D) on the cache's device.

        Raises:
            PromptTooLong: a new prompt does not fit in 64 tokens.
        """
        with self._lock:
            missing = list(dict.fromkeys(p for p in prompts if p not in self._store))
            self.misses += len(missing)
            self.hits += len(prompts) - len(missing)
            if missing:
                tokens = tokenize(missing).to(self._device)
                with torch.inference_mode():
                    feats = self._encode(tokens).float()
                for p, f in zip(missing, feats, strict=True):
                    self._store[p] = f.detach().clone()
                log.debug("text cache: encoded %d new prompt(s), %d cached", len(missing), len(self._store))
            rows = []
            for p in prompts:
                self._store.move_to_end(p)
                rows.append(self._store[p])
            while len(self._store) > self._max:
                self._store.popitem(last=False)
            return torch.stack(rows)

    def stats(self) -> dict[str, int]:
        """Counters: ``hits``, ``misses`` (prompt lookups) and ``entries`` (cached strings)."""
        return {"hits": self.hits, "misses": self.misses, "entries": len(self._store)}
