"""Prompt vocabulary, prompt strings, CLIP BPE tokenisation at 64 and the text-feature cache."""

from __future__ import annotations

import open_clip
import pytest
import torch

from changeclip.errors import InputError
from changeclip.model.prompts import (
    BACKGROUND_PROMPT,
    RS_CLASSES,
    PromptTooLong,
    TextFeatureCache,
    build_prompts,
    count_tokens,
    tokenize,
)


def test_vocabulary_is_the_official_56_in_order() -> None:
    assert len(RS_CLASSES) == 56
    assert len(set(RS_CLASSES)) == 56
    assert RS_CLASSES[:3] == ("airport", "bare land", "basketball court")
    assert RS_CLASSES[37] == "building"
    assert RS_CLASSES[-3:] == ("snow land", "container", "cabin")


def test_build_prompts() -> None:
    tags = ["building", "road", "tree"]
    bg, fg = build_prompts(tags)
    assert bg == BACKGROUND_PROMPT == "remote sensing image background objects"
    assert fg == "remote sensing image foreground objects, building, road, tree"
    assert build_prompts(tags, "  solar   panel ")[1] == (
        "remote sensing image foreground objects, building, road, tree, solar panel")
    assert build_prompts([], "")[1] == "remote sensing image foreground objects"
    assert build_prompts([], "ship")[1] == "remote sensing image foreground objects, ship"


def test_tokenize_matches_clip_bpe_at_64() -> None:
    prompts = list(build_prompts(["bare land", "farmland", "road", "meadow", "tree", "building", "desert",
                                  "river", "pond"]))
    ours = tokenize(prompts)
    assert ours.shape == (2, 64) and ours.dtype == torch.long
    assert torch.equal(ours, open_clip.tokenize(prompts, context_length=64))
    assert ours[0, 0] == 49406 and int(ours[0].argmax()) == count_tokens(prompts[0]) - 1  # EOT is the max id


def test_prompt_too_long_is_an_input_error_with_counts() -> None:
    words = ", ".join(["impermeable surface"] * 20)
    _, fg = build_prompts([], words)
    n = count_tokens(fg)
    assert n > 64
    with pytest.raises(PromptTooLong) as info:
        tokenize(fg)
    assert isinstance(info.value, InputError)
    assert f"{n} tokens" in str(info.value) and "at most 64" in str(info.value)
    # exactly 64 fits, 65 does not
    base = count_tokens("remote")  # "remote" + SOT + EOT
    fits = "remote" + " a" * (64 - base)
    assert count_tokens(fits) == 64
    assert tokenize(fits).shape == (1, 64)
    with pytest.raises(PromptTooLong):
        tokenize(fits + " a")


def test_text_cache_counts_hits_and_encodes_each_string_once() -> None:
    calls: list[int] = []

    def encode(tokens: torch.Tensor) -> torch.Tensor:
        calls.append(tokens.shape[0])
        return tokens[:, :4].float()

    cache = TextFeatureCache(encode, max_entries=3)
    a = cache.get(["x y", "x y", "z"])
    assert a.shape == (3, 4) and torch.equal(a[0], a[1])
    assert calls == [2] and cache.stats() == {"hits": 1, "misses": 2, "entries": 2}
    b = cache.get(["z", "x y"])
    assert calls == [2] and cache.hits == 3 and torch.equal(b[0], a[2])
    cache.get(["p", "q"])  # LRU bound 3: the least recently used ("z") goes
    assert len(cache) == 3
    cache.get(["z"])
    assert calls == [2, 2, 1] and cache.misses == 5


def test_text_cache_rejects_long_prompt() -> None:
    cache = TextFeatureCache(lambda t: t.float())
    with pytest.raises(PromptTooLong):
        cache.get(["word " * 80])
    assert len(cache) == 0
