"""Text-side cost (tokenising, text encoder, cache lookup) and the cache hit rate per prompt mode."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

from changeclip.bench.common import median, seeded_model, time_calls
from changeclip.inference.predictor import ChangeCLIPPredictor
from changeclip.model.prompts import RS_CLASSES, TextFeatureCache, build_prompts, tokenize

log = logging.getLogger(__name__)

_EXAMPLE_TAGS = list(RS_CLASSES[:9])


def bench_text_cost(variant: str, device: str, precisions: list[str], reps: int = 5) -> list[dict[str, Any]]:
    """Per-pair text cost: the official path tokenises and encodes 4 prompts per pair
    (background + foreground, for both dates); a cache hit only looks 4 strings up.

    Returns:
        Rows with ``tokenise_ms``, ``encode_ms`` (4 prompts), ``cache_hit_ms`` (4 lookups).
    """
    base = seeded_model(variant, device, "fp32")
    prompts = list(build_prompts(_EXAMPLE_TAGS)) * 2
    tok_s = median(time_calls(lambda: tokenize(prompts), "cpu", reps))
    tokens = tokenize(prompts).to(device)
    rows = []
    for prec in precisions:
        lm = dataclasses.replace(base, precision=prec)
        enc_s = median(time_calls(lambda lm=lm: lm.encode_text(tokens), device, reps))
        cache = TextFeatureCache(lm.encode_text, device=device)
        cache.get(prompts)
        hit_s = median(time_calls(lambda cache=cache: cache.get(prompts), device, reps * 4))
        rows.append({"variant": variant, "precision": prec, "prompts_per_pair": len(prompts),
                     "tokenise_ms": tok_s * 1e3, "encode_ms": enc_s * 1e3, "cache_hit_ms": hit_s * 1e3,
                     "uncached_over_cached": (tok_s + enc_s) / hit_s})
    return rows


def bench_hit_rate(device: str, tiles: np.ndarray, tiles_b: np.ndarray, batch: int = 8,
                   tagger_weights: str | None = None) -> list[dict[str, Any]]:
    """Text-cache hit rate per prompt mode over a set of tiles (tiny network: the rate does not
    depend on the network's size).

    ``auto`` runs only with ``tagger_weights``. Its rate is only as representative as those
    weights and these tiles: random weights or random tiles give tags (and a rate) that say
    nothing about real CLIP tags on real imagery.

    Args:
        device: ``cpu`` / ``cuda:N``.
        tiles, tiles_b: (N, 3, H, W) float32 0..255 pairs.
        batch: pairs per predictor call.
        tagger_weights: CLIP weights for ``auto``.
    """
    from changeclip.model.tagger import Tagger

    base = seeded_model("tiny-rn50", device, "fp32")
    modes: list[tuple[str, str, Any, bool]] = [("none", "", None, True), ("words", "building, road", None, True)]
    if tagger_weights:
        modes.append(("auto", "", Tagger(tagger_weights, device=device), False))
    rows = []
    for mode, words, tagger, representative in modes:
        lm = dataclasses.replace(base)
        lm.text_cache = TextFeatureCache(lm.encode_text, device=device)
        p = ChangeCLIPPredictor(lm, mode, words, tagger=tagger, batch_size=batch)
        for i in range(0, len(tiles), batch):
            p.predict_logits(tiles[i:i + batch], tiles_b[i:i + batch])
        st = p.cache.stats()
        lookups = st["hits"] + st["misses"]
        rows.append({"prompt_mode": mode, "tiles": int(len(tiles)), "lookups": lookups, **st,
                     "hit_rate": st["hits"] / lookups if lookups else None, "representative": representative})
    return rows
