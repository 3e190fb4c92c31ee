"""The changeclip engine: weights checks, model cache reuse, prompt policy and predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from changeclip.engines import build_engine
from changeclip.errors import ModelError
from changeclip.inference.cache import ModelCache
from changeclip.protocol import DetectParams


def _params(**kw: object) -> DetectParams:
    base: dict[str, object] = {"before": "a.tif", "after": "b.tif", "output_dir": "out", "device": "cpu",
                               "prompt_mode": "none"}
    base.update(kw)
    return DetectParams(**base)  # type: ignore[arg-type]


def test_weights_required(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="needs weights: pass --weights FILE.*--engine irmad"):
        build_engine(_params())
    with pytest.raises(ModelError, match="does not exist"):
        build_engine(_params(weights=str(tmp_path / "missing.safetensors")))


def test_wrong_weights_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"definitely not a weights file" * 10)
    with pytest.raises(ModelError):
        build_engine(_params(weights=str(junk)))
    import torch
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"linear.weight": torch.zeros(3, 3)}, str(other))
    with pytest.raises(ModelError):
        build_engine(_params(weights=str(other)))


def test_prompt_mode_auto_without_tagger_offline(tiny_weights, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="tagger"):
        build_engine(_params(weights=str(tiny_weights("tiny-rn50")), prompt_mode="auto"))


def test_predict_and_cache_reuse(tiny_weights) -> None:
    cache = ModelCache(max_entries=2)
    w = str(tiny_weights("tiny-rn50"))
    eng = build_engine(_params(weights=w), cache)
    assert eng.name == "changeclip" and eng.device == "cpu" and eng.needs_context and eng.clip_input
    rng = np.random.default_rng(0)
    b = rng.uniform(0, 255, size=(2, 3, 64, 64)).astype(np.float32)
    p = eng.predict_proba(b, b[:, ::-1].copy(), np.ones((2, 64, 64), bool))
    assert p.shape == (2, 64, 64) and p.dtype == np.float32 and 0 <= p.min() and p.max() <= 1
    eng2 = build_engine(_params(weights=w, prompt_mode="words", prompt="building"), cache)
    assert cache.hits == 1 and cache.misses == 1 and len(cache) == 1
    assert eng2.predictor.loaded is eng.predictor.loaded
    d = eng.describe()
    assert d["name"] == "changeclip" and len(d["weights_sha256"]) == 64 and d["prompt_mode"] == "none"
