"""Devices, load_model and ChangeCLIPPredictor with TINY seeded weights and a seeded tiny tagger."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from changeclip.errors import InputError, ModelError
from changeclip.inference.devices import cuda_available, list_devices, resolve_device, resolve_precision
from changeclip.inference.predictor import ChangeCLIPPredictor, LoadedModel, load_model
from changeclip.model.prompts import PromptTooLong, build_prompts
from changeclip.model.tagger import Tagger, random_clip_state_dict


@pytest.fixture(scope="module")
def loaded(tiny_weights: Callable[[str], Path]) -> LoadedModel:
    return load_model(tiny_weights("tiny-rn50"), device="cpu")


@pytest.fixture(scope="module")
def tagger(tmp_path_factory: pytest.TempPathFactory) -> Tagger:
    path = tmp_path_factory.mktemp("tagger") / "tiny_clip.pt"
    torch.save(random_clip_state_dict(seed=0, tiny=True), path)
    return Tagger(path)


def _pair(n: int = 2, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = (rng.random((n, 3, size, size)) * 255).astype(np.float32)
    b = np.clip(a + rng.normal(0, 40, a.shape), 0, 255).astype(np.float32)
    b[:, :, 16:48, 16:48] = 255 - b[:, :, 16:48, 16:48]
    return a, b


class StubTagger:
    """Tags from the image brightness: dark -> one list, bright -> another (deterministic)."""

    DARK = ["forest", "lake", "meadow", "river", "pond", "tree", "farmland", "wetland", "island"]
    BRIGHT = ["building", "road", "cars", "parking lot", "square", "church", "stadium", "airport", "bridge"]

    def tag(self, images: Any) -> list[list[str]]:
        means = torch.as_tensor(images).float().mean(dim=(1, 2, 3))
        return [list(self.DARK if m < 128 else self.BRIGHT) for m in means]

    def describe(self) -> dict[str, Any]:
        return {"weights": "stub"}


def test_devices_here() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda:0" if cuda_available() else "cpu")
    with pytest.raises(InputError, match="auto, cpu, cuda or cuda:N"):
        resolve_device("gpu")
    if not cuda_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            resolve_device("cuda:0")
    devices = list_devices()
    assert devices[0]["id"] == "cpu" and devices[0]["memory_total_bytes"] > 0 and devices[0]["name"]
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    assert isinstance(devices[0]["bf16"], bool)
    with pytest.raises(InputError, match="fp16 is not supported on the CPU"):
        resolve_precision("fp16", "cpu")
    assert resolve_precision("int8", "cpu") == "int8"  # a quantised graph for the CPU runtimes
    with pytest.raises(InputError, match="int8 runs on the CPU only"):
        resolve_precision("int8", "cuda:0")
    with pytest.raises(InputError, match="precision must be"):
        resolve_precision("int4", "cpu")


def test_bf16_on_a_cpu_without_native_bf16_warns(monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    from changeclip.inference import devices

    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level("WARNING", logger="changeclip.inference.devices"):
        assert resolve_precision("bf16", "cpu") == "bf16"
        assert resolve_precision("fp32", "cpu") == "fp32"
    assert [r.getMessage() for r in caplog.records if "emulated" in r.getMessage()] == [
        "this CPU has no native bf16 (AMX or AVX-512 BF16): bf16 will be emulated and slower than fp32; "
        "use --precision fp32"]
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    caplog.clear()
    with caplog.at_level("WARNING", logger="changeclip.inference.devices"):
        resolve_precision("bf16", "cpu")
    assert not caplog.records


def test_load_model(loaded: LoadedModel, tiny_weights: Callable[[str], Path]) -> None:
    assert not loaded.model.training and loaded.device == "cpu" and loaded.precision == "fp32"
    assert loaded.cfg.name == "tiny-rn50" and len(loaded.weights_sha256) == 64
    assert loaded.weights_path.endswith(".safetensors")
    with pytest.raises(ModelError, match="variant 'vit-b-16' was requested"):
        load_model(tiny_weights("tiny-rn50"), variant="vit-b-16", device="cpu")


def test_rn50_runs_channels_last_with_the_same_results(loaded: LoadedModel) -> None:
    # The loader picks channels-last for RN50 (faster convolutions on oneDNN CPUs and CUDA);
    # the logits must equal those of the same network in the default layout.
    assert loaded.channels_last
    assert loaded.model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    a, b = _pair()
    fast = ChangeCLIPPredictor(loaded, "none").predict_logits(a, b)
    plain = dataclasses.replace(loaded, model=copy.deepcopy(loaded.model).to(memory_format=torch.contiguous_format),
                                channels_last=False)
    assert not plain.model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(fast, ChangeCLIPPredictor(plain, "none").predict_logits(a, b), atol=1e-5)


def test_modes_none_and_words(loaded: LoadedModel) -> None:
    a, b = _pair()
    none = ChangeCLIPPredictor(loaded, "none")
    p_none = none.predict_proba(a, b)
    assert p_none.shape == (2, 64, 64) and p_none.dtype == np.float32
    assert np.isfinite(p_none).all() and p_none.min() >= 0 and p_none.max() <= 1
    logits = none.predict_logits(a, b)
    assert logits.shape == (2, 2, 64, 64)
    np.testing.assert_allclose(torch.from_numpy(logits).softmax(1)[:, 1].numpy(), p_none, atol=1e-6)
    # batching does not change the result
    one = ChangeCLIPPredictor(loaded, "none", batch_size=1).predict_proba(a, b)
    np.testing.assert_allclose(one, p_none, atol=1e-5)
    words = ChangeCLIPPredictor(loaded, "words", "solar panel, greenhouse")
    p_words = words.predict_proba(a, b)
    assert np.isfinite(p_words).all() and 0 <= p_words.min() and p_words.max() <= 1
    assert np.abs(p_words - p_none).max() > 1e-6  # the words reach the network
    d = words.describe()
    assert d["prompt_mode"] == "words" and d["prompts"][1].endswith("solar panel, greenhouse")
    assert d["random_weights"] is True and d["tiles"] == 2


def test_text_cache_hits(loaded: LoadedModel) -> None:
    a, b = _pair(1)
    pred = ChangeCLIPPredictor(loaded, "words", "harbor")
    before = dict(pred.cache.stats())
    pred.predict_proba(a, b)
    mid = pred.cache.stats()
    pred.predict_proba(a, b)
    after = pred.cache.stats()
    assert mid["misses"] - before["misses"] <= 2  # at most bg + fg encoded once
    assert after["misses"] == mid["misses"] and after["hits"] == mid["hits"] + 2


def test_mode_auto_with_seeded_tagger(loaded: LoadedModel, tagger: Tagger) -> None:
    a, b = _pair()
    pred = ChangeCLIPPredictor(loaded, "auto", tagger=tagger)
    p = pred.predict_proba(a, b)
    assert p.shape == (2, 64, 64) and np.isfinite(p).all() and 0 <= p.min() and p.max() <= 1
    prompts_a, prompts_b = pred.prompts_for(a, b)
    assert prompts_a[0] == build_prompts(tagger.tag(a[:1])[0])
    assert prompts_b[1] == build_prompts(tagger.tag(b[1:])[0])
    stats = pred.cache.stats()
    assert stats["hits"] > 0
    d = pred.describe()
    assert d["tagger"]["top_k"] == 9 and sum(d["top_tags"].values()) > 0
    words = ChangeCLIPPredictor(loaded, "auto", "ship", tagger=tagger)
    assert words.prompts_for(a, b)[0][0][1].endswith(", ship")


def test_official_test_prompts_use_a_tags_for_b(loaded: LoadedModel) -> None:
    a, b = _pair(1)
    a[:] = np.minimum(a, 60)  # dark before, bright after: the stub tags them differently
    b[:] = np.maximum(b, 200)
    stub = StubTagger()
    faithful = ChangeCLIPPredictor(loaded, "auto", tagger=stub)  # type: ignore[arg-type]
    quirk = ChangeCLIPPredictor(loaded, "auto", tagger=stub, official_test_prompts=True)  # type: ignore[arg-type]
    fa, fb = faithful.prompts_for(a, b)
    qa, qb = quirk.prompts_for(a, b)
    assert fa == qa and fb[0][1].endswith("airport, bridge") and fa[0][1].endswith("wetland, island")
    assert qb == qa  # B's foreground prompt built from A's tags
    p_faithful, p_quirk = faithful.predict_proba(a, b), quirk.predict_proba(a, b)
    assert np.abs(p_faithful - p_quirk).max() > 1e-6


def test_predictor_errors(loaded: LoadedModel, tagger: Tagger) -> None:
    with pytest.raises(InputError, match="prompt mode is 'none'"):
        ChangeCLIPPredictor(loaded, "none", "building")
    with pytest.raises(InputError, match="needs prompt words"):
        ChangeCLIPPredictor(loaded, "words", "  ")
    with pytest.raises(ModelError, match="needs the CLIP tagger"):
        ChangeCLIPPredictor(loaded, "auto")
    with pytest.raises(InputError, match="prompt mode must be"):
        ChangeCLIPPredictor(loaded, "magic")
    with pytest.raises(PromptTooLong, match="at most 64"):
        ChangeCLIPPredictor(loaded, "words", ", ".join(["impermeable surface"] * 20))
    with pytest.raises(PromptTooLong):  # fits alone, but not after 9 long tags
        ChangeCLIPPredictor(loaded, "auto", ", ".join(["storage tanks"] * 8), tagger=tagger)
    pred = ChangeCLIPPredictor(loaded, "none")
    a, b = _pair(1)
    with pytest.raises(InputError, match="differ in shape"):
        pred.predict_proba(a, b[:, :, :32])
    with pytest.raises(InputError, match="multiple of 32"):
        pred.predict_proba(a[:, :, :48, :48], b[:, :, :48, :48])
    with pytest.raises(InputError, match=r"\(N, 3, H, W\)"):
        pred.predict_proba(a[:, :2], b[:, :2])
