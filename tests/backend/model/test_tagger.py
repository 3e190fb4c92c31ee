"""CLIP zero-shot tagger on a seeded random (tiny) CLIP: loading, preprocessing, top-9 tags, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from changeclip.errors import ModelError
from changeclip.model.prompts import RS_CLASSES
from changeclip.model.tagger import CLIP_MEAN, CLIP_STD, Tagger, random_clip_state_dict


@pytest.fixture(scope="module")
def tagger_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tagger") / "tiny_clip.pt"
    torch.save(random_clip_state_dict(seed=0, tiny=True), path)
    return path


@pytest.fixture(scope="module")
def tagger(tagger_file: Path) -> Tagger:
    return Tagger(tagger_file)


def _images(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, 3, size, size)) * 255).astype(np.float32)


def test_top9_tags_in_probability_order(tagger: Tagger) -> None:
    imgs = _images(3)
    probs = tagger.probabilities(imgs)
    assert probs.shape == (3, 56)
    assert torch.allclose(probs.sum(dim=1), torch.ones(3), atol=1e-5)
    tags = tagger.tag(imgs)
    assert len(tags) == 3
    for row, p in zip(tags, probs, strict=True):
        assert len(row) == 9 and len(set(row)) == 9 and set(row) <= set(RS_CLASSES)
        vals = [float(p[RS_CLASSES.index(t)]) for t in row]
        assert vals == sorted(vals, reverse=True)
        assert vals[-1] >= float(p.sort(descending=True).values[8])


def test_batching_does_not_change_tags(tagger_file: Path) -> None:
    imgs = _images(3, seed=1)
    small = Tagger(tagger_file, batch_size=1)
    big = Tagger(tagger_file, batch_size=16)
    assert small.tag(imgs) == big.tag(imgs)
    assert torch.allclose(small.probabilities(imgs), big.probabilities(imgs), atol=1e-6)


def test_class_features_computed_once(tagger: Tagger) -> None:
    a = tagger.class_features()
    assert tagger.class_features() is a
    assert a.shape[0] == 56
    assert torch.allclose(a.norm(dim=-1), torch.ones(56), atol=1e-5)


def test_preprocessing_matches_openai_pil_pipeline() -> None:
    open_clip = pytest.importorskip("open_clip")
    pil = pytest.importorskip("PIL.Image")
    t = Tagger.__new__(Tagger)
    t.image_size = 224
    t._mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    t._std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    rng = np.random.default_rng(0)
    # smooth image (aerial-like), non-square to exercise the shortest-side resize and the crop
    base = rng.random((3, 32, 38)) * 255
    img = torch.nn.functional.interpolate(torch.from_numpy(base)[None], size=(256, 300), mode="bilinear")[0]
    img8 = img.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    ref = open_clip.image_transform(224, is_train=False, mean=CLIP_MEAN, std=CLIP_STD)(pil.fromarray(img8))
    ours = t.preprocess(torch.from_numpy(img8).permute(2, 0, 1)[None].float())[0]
    assert ours.shape == ref.shape == (3, 224, 224)
    one_level = 1.0 / 255 / min(CLIP_STD) + 1e-6
    assert float((ours - ref).abs().max()) <= one_level + 1e-6  # at most one 8-bit grey level apart


def test_missing_and_foreign_weights(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        Tagger(tmp_path / "nope.pt")
    other = tmp_path / "other.pt"
    torch.save({"layer.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(ModelError, match="not an OpenAI/open_clip CLIP checkpoint"):
        Tagger(other)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ModelError, match="cannot read"):
        Tagger(junk)


def test_no_weights_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="--tagger-weights FILE") as info:
        Tagger(None)
    assert "'none' or 'words'" in str(info.value)


def test_no_weights_and_no_network_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    import time

    import changeclip.model.tagger as tagger_mod

    for name in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    probed: list[tuple[str, int]] = []

    def no_network(address: tuple[str, int], timeout: float | None = None) -> socket.socket:
        probed.append(address)
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(tagger_mod.socket, "create_connection", no_network)
    start = time.monotonic()
    with pytest.raises(ModelError, match=r"cannot be downloaded \(huggingface.co cannot be reached: .*Name or "
                                         r"service not known\).*--tagger-weights FILE.*'none' or 'words'"):
        Tagger(None)
    assert probed == [("huggingface.co", 443)] and time.monotonic() - start < 5
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.example:8080")
    with pytest.raises(ModelError, match="mirror.example cannot be reached"):
        Tagger(None)
    assert probed[-1] == ("mirror.example", 8080)
    # behind a proxy the probe cannot tell: the download itself decides
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert tagger_mod._hub_unreachable() is None and len(probed) == 2


def test_bad_input_shape(tagger: Tagger) -> None:
    from changeclip.errors import InputError

    with pytest.raises(InputError, match=r"\(N, 3, H, W\)"):
        tagger.tag(np.zeros((2, 4, 32, 32), np.float32))
