"""``detect --describe``: the right words land on the right polygon, end to end.

A stand-in CLIP maps known colours to known class embeddings, so the test knows what each crop
must be called: a forest square that became a building (after raster in another CRS, so the crop
of each date only lands on the square if the georeferencing of crops is right), and a lake that
did not change. The real open_clip code path runs with seeded random weights.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from geodata import write_raster
from osgeo import gdal, ogr

from changeclip import pipeline
from changeclip.errors import InputError, ModelError
from changeclip.protocol import DetectParams

COLOURS = {"building": (220, 40, 40), "forest": (40, 160, 40), "lake": (40, 60, 200), "bare land": (150, 150, 150)}
NAMES = list(COLOURS)
FOREST = (40, 80, 40, 80)   # rows 40-80, cols 40-80 of the before grid
LAKE = (100, 140, 100, 140)


class StandInClip:
    """Colour of a crop's centre -> one-hot class embedding; a text -> the class it names."""

    image_size = 32
    context_length = 77
    logit_scale = 100.0

    def __init__(self) -> None:
        self.crops: list[np.ndarray] = []

    def encode_images(self, crops: list[np.ndarray]) -> torch.Tensor:
        out = torch.zeros(len(crops), len(NAMES))
        for i, c in enumerate(crops):
            self.crops.append(c)
            h, w = c.shape[1:]
            centre = c[:, 2 * h // 5:3 * h // 5 + 1, 2 * w // 5:3 * w // 5 + 1].reshape(3, -1).mean(axis=1)
            dist = [np.linalg.norm(centre - np.array(rgb)) for rgb in COLOURS.values()]
            out[i, int(np.argmin(dist))] = 1.0
        return out

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        out = torch.full((len(texts), len(NAMES)), 0.5)
        for i, t in enumerate(texts):
            hits = [k for k, n in enumerate(NAMES) if n in t]
            if hits:
                out[i] = 0.0
                out[i, hits[0]] = 1.0
        return torch.nn.functional.normalize(out, dim=-1)

    def token_count(self, text: str) -> int:
        return len(text.split()) + 2

    def describe(self) -> dict[str, str]:
        return {"model": "stand-in"}


def _scene(colour_square: tuple[int, int, int]) -> np.ndarray:
    """Smooth, varied ground (no global linear map can turn the square's change into "no change" for
    IR-MAD, and warping it to another CRS changes it little), a uniform square of ``colour_square`` and a
    lake that never changes."""
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:160, 0:160].astype(np.float64)
    img = np.stack([120 + 60 * np.sin(x / 17 + b) * np.cos(y / 23 - 2 * b) for b in range(3)])
    r0, r1, c0, c1 = FOREST
    img[:, r0:r1, c0:c1] = np.array(colour_square)[:, None, None]
    r0, r1, c0, c1 = LAKE
    img[:, r0:r1, c0:c1] = np.array(COLOURS["lake"])[:, None, None]
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """Before in UTM 33N (2 m); after = the changed scene warped to Web Mercator (nearest)."""
    folder = tmp_path_factory.mktemp("describe_scene")
    gt = (500000.0, 2.0, 0.0, 4500000.0, 0.0, -2.0)
    before = write_raster(folder / "before.tif", _scene(COLOURS["forest"]), gt=gt, epsg=32633)
    after_utm = write_raster(folder / "after_utm.tif", _scene(COLOURS["building"]), gt=gt, epsg=32633)
    after = str(folder / "after_3857.tif")
    gdal.Warp(after, after_utm, dstSRS="EPSG:3857", resampleAlg="bilinear")
    return before, after


def _features(path: Path) -> list[dict]:
    ds = ogr.Open(str(path))
    layer = ds.GetLayer(0)
    out = []
    for f in layer:
        env = f.GetGeometryRef().GetEnvelope()
        out.append({**f.items(), "env": env})
    return out


def _inside(env: tuple[float, ...], box: tuple[int, int, int, int]) -> bool:
    r0, r1, c0, c1 = box
    cx, cy = (env[0] + env[1]) / 2, (env[2] + env[3]) / 2
    col, row = (cx - 500000.0) / 2.0, (4500000.0 - cy) / 2.0
    return c0 <= col <= c1 and r0 <= row <= r1


def _run(scene: tuple[str, str], out: Path, monkeypatch: pytest.MonkeyPatch, **kw: object) -> dict:
    monkeypatch.setattr(pipeline, "DESCRIBE_ENCODER", StandInClip())
    vocab = out.parent / f"{out.name}_vocab.txt"
    vocab.write_text("\n".join(NAMES) + "\n", encoding="utf-8")
    params = DetectParams(scene[0], scene[1], str(out), engine="irmad", tile=64, overlap=16, polygons=True,
                          min_area=400.0, describe=True, vocabulary=str(vocab), **kw)  # type: ignore[arg-type]
    return pipeline.run_detection(params)


def test_the_right_classes_and_query_score_land_on_the_right_polygon(scene: tuple[str, str], tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    summary = _run(scene, tmp_path / "out", monkeypatch, query="forest to building", keep_matching=True)
    feats = _features(tmp_path / "out" / "change_polygons.gpkg")
    square = [f for f in feats if _inside(f["env"], FOREST)]
    assert square, f"IR-MAD found no polygon on the changed square: {feats}"
    for f in square:
        assert (f["before_class"], f["after_class"]) == ("forest", "building")
        assert f["change_label"] == "forest → building"
        assert f["before_p"] > 0.9 and f["after_p"] > 0.9
        assert f["query_score"] > 0.9 and f["matches_query"] == 1
    for f in feats:
        if not _inside(f["env"], FOREST):
            assert f["matches_query"] == 0
    info = summary["describe"]
    assert info["polygons"] == len(feats)
    assert info["query"]["kind"] == "transition" and info["query"]["matching"] == len(square)
    assert info["query"]["matching_area_m2"] == pytest.approx(sum(f["area_m2"] for f in square))
    # --keep-matching: only the matching polygons, and a mask of only their changed pixels
    matching = _features(tmp_path / "out" / "change_polygons_matching.gpkg")
    assert sorted(f["area_m2"] for f in matching) == sorted(f["area_m2"] for f in square)
    full = gdal.Open(str(tmp_path / "out" / "change_mask.tif")).ReadAsArray()
    kept = gdal.Open(str(tmp_path / "out" / "change_mask_matching.tif")).ReadAsArray()
    assert kept.shape == full.shape and set(np.unique(kept)) <= {0, 1, 255}
    assert ((kept == 1) <= (full == 1)).all() and ((kept == 255) == (full == 255)).all()
    r0, r1, c0, c1 = FOREST
    assert kept[r0 + 5:r1 - 5, c0 + 5:c1 - 5].mean() == pytest.approx(full[r0 + 5:r1 - 5, c0 + 5:c1 - 5].mean())
    assert kept.sum() < full[full != 255].sum() or len(matching) == len(feats)


def test_a_words_query_scores_the_after_date(scene: tuple[str, str], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _run(scene, tmp_path / "lake", monkeypatch, query="lake")
    square = [f for f in _features(tmp_path / "lake" / "change_polygons.gpkg") if _inside(f["env"], FOREST)]
    assert square and all(f["query_score"] < 0.01 and f["matches_query"] == 0 for f in square)
    _run(scene, tmp_path / "bld", monkeypatch, query="building")
    square = [f for f in _features(tmp_path / "bld" / "change_polygons.gpkg") if _inside(f["env"], FOREST)]
    assert square and all(f["query_score"] > 0.9 and f["matches_query"] == 1 for f in square)


def test_real_clip_code_path_with_seeded_random_weights(scene: tuple[str, str], tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from changeclip.model.prompts import RS_CLASSES
    from changeclip.model.tagger import random_clip_state_dict

    weights = tmp_path / "clip_seeded.safetensors"
    save_file(random_clip_state_dict(seed=0, tiny=True), str(weights))
    out = tmp_path / "real"
    summary = pipeline.run_detection(DetectParams(
        scene[0], scene[1], str(out), engine="irmad", tile=64, overlap=16, polygons=True, min_area=400.0,
        describe=True, describe_weights=str(weights), query="building"))
    feats = _features(out / "change_polygons.gpkg")
    assert feats
    for f in feats:
        assert f["before_class"] in RS_CLASSES and f["after_class"] in RS_CLASSES
        assert 0 < f["before_p"] <= 1 and 0 < f["after_p"] <= 1 and 0 <= f["query_score"] <= 1
        assert f["change_label"] == f"{f['before_class']} → {f['after_class']}"
    assert summary["describe"]["clip"]["weights"] == str(weights)
    assert summary["describe"]["vocabulary"]["size"] == 56


def _no_outputs(out: Path) -> None:
    assert not out.exists(), f"{out} was created although the run was refused before any work"


@pytest.mark.parametrize(("kw", "exc", "match"), [
    ({"query": "building " * 80}, InputError, "too long for CLIP"),
    ({"vocabulary": "EMPTY"}, InputError, "holds 0 class name"),
    ({"describe_model": "No-Such-Net"}, ModelError, "not an open_clip architecture"),
])
def test_bad_describe_input_is_refused_before_any_work(scene: tuple[str, str], tmp_path: Path, kw: dict,
                                                       exc: type, match: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if kw.get("vocabulary") == "EMPTY":
        (tmp_path / "empty.txt").write_text("", encoding="utf-8")
        kw = {"vocabulary": str(tmp_path / "empty.txt")}
    if "describe_model" in kw:
        kw["describe_weights"] = str(tmp_path / "clip.safetensors")
        from safetensors.torch import save_file

        from changeclip.model.tagger import random_clip_state_dict

        save_file(random_clip_state_dict(seed=0, tiny=True), kw["describe_weights"])
    else:
        monkeypatch.setattr(pipeline, "DESCRIBE_ENCODER", StandInClip())
    out = tmp_path / "out"
    with pytest.raises(exc, match=match):
        pipeline.run_detection(DetectParams(scene[0], scene[1], str(out), engine="irmad", polygons=True,
                                            describe=True, **kw))
    _no_outputs(out)


def test_offline_without_clip_weights_names_the_options(scene: tuple[str, str], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="--describe-weights FILE.*RemoteCLIP"):
        pipeline.run_detection(DetectParams(scene[0], scene[1], str(tmp_path / "out"), engine="irmad",
                                            polygons=True, describe=True))
    _no_outputs(tmp_path / "out")


@pytest.mark.parametrize(("args", "match"), [
    (["--describe"], "--describe: describing needs change polygons: turn polygons on (--polygons"),
    (["--polygons", "--query", "building"], "--query: a query is scored"),
    (["--polygons", "--describe", "--keep-matching"], "--keep-matching: keeping the matching polygons needs a query"),
    (["--polygons", "--describe", "--query", "x", "--query-threshold", "1.5"], "--query-threshold"),
])
def test_cli_refuses_inconsistent_describe_options(scene: tuple[str, str], tmp_path: Path, args: list[str],
                                                   match: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "changeclip", "detect", scene[0], scene[1], "-o",
                           str(tmp_path / "out"), "--engine", "irmad", *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert match in proc.stderr
    _no_outputs(tmp_path / "out")


@pytest.mark.slow
def test_a_named_open_clip_architecture_loads_as_its_publishers_build_it(tmp_path: Path) -> None:
    """A remote-sensing CLIP checkpoint is an open_clip state dict of a named architecture (RemoteCLIP,
    GeoRSCLIP: ViT-B-32, ...): built by name and loaded strictly; the wrong name is refused in words.
    ViT-S-32 stands in for them here (same format, smaller)."""
    import open_clip

    from changeclip.describe.encoder import OpenClipEncoder

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-S-32", pretrained=None)
    path = tmp_path / "rs_clip.pt"
    torch.save(model.state_dict(), path)
    encoder = OpenClipEncoder(path, "ViT-S-32")
    emb = encoder.encode_images([np.full((3, 40, 50), 128.0, np.float32)])
    text = encoder.encode_texts(["a satellite image of building."])
    assert emb.shape == (1, text.shape[1]) and torch.allclose(emb.norm(dim=-1), torch.ones(1))
    assert encoder.describe()["model"] == "ViT-S-32" and "open_clip ViT-S-32" in encoder.describe()["source"]
    with pytest.raises(ModelError, match="does not fit open_clip ViT-S-16"):
        OpenClipEncoder(path, "ViT-S-16")
